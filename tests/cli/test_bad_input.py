"""Bad input to every `actstore` command: one stderr line, exit status 2, nothing left behind.

One table: each row is an argv (with placeholders), the text its single error line must hold, and
where it runs. Rows run in-process through `main()`, except filesystem faults, which run the real
command on a tiny or read-only tmpfs (tests/fsfaults.py). After each row the scratch directory
(also the working directory) holds exactly what it held before, the stores hold no temporary or
empty files, and a fault filesystem holds nothing (an ingest keeps its committed chunks: there
only temporary and empty files count).

Placeholders: {add} {ioi} {br} zoo stores (addition, IOI on zoo:lm, brackets), {corrupt_meta}
and {missing_weights} damaged copies of {add}, {out} the scratch directory, {file} a regular
file in it, {fs} the fault filesystem, {long} a 300-byte name, {bad} a name that is not UTF-8.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import actstore
from actstore.cli import build_parser, main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fsfaults import run_cli_on_readonly_dir, run_cli_on_small_fs  # noqa: E402

LONG = "y" * 300
BAD = os.fsdecode(b"x\xff")  # how Python hands over a non-UTF-8 argv byte
COMMANDS = {a for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)
            for a in action.choices}
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda is valid")
slow = pytest.mark.slow


@dataclass(frozen=True)
class Row:
    argv: tuple[str, ...]
    fragment: str
    fs: int | str | None = None   # None: in-process; N: a tmpfs of N KiB; "ro": a read-only tmpfs
    keeps_commits: bool = False   # ingest: committed chunks stay on a full disk (resumable)


def row(*argv: str, says: str, fs: int | str | None = None, marks=(), keeps_commits: bool = False):
    cmd = argv[0] if argv else ""
    name = f"{cmd}:{' '.join(argv[1:])}"[:90] + (f" [fs={fs}]" if fs is not None else "")
    return pytest.param(Row(argv, says, fs, keeps_commits), id=name, marks=marks)


ING = ("ingest", "--task", "addition", "--model", "zoo:addition", "--quiet")
EVAL = ("eval", "--task", "addition", "--model", "zoo:addition")

ROWS = [
    # dataset
    row("dataset", "addition", "--n", "100000000000", "-o", "{out}/d.parquet", says="n must be at most 1,000,000"),
    row("dataset", "addition", "--n", "0", "-o", "{out}/d.parquet", says="n must be a positive integer"),
    row("dataset", "addition", "--n", "abc", "-o", "{out}/d.parquet", says="invalid int value: 'abc'"),
    row("dataset", "nosuch", "-o", "{out}/d.parquet", says="unknown task 'nosuch'"),
    row("dataset", "addition", "--param", "digits=0", "-o", "{out}/d.parquet", says="digits must be an integer"),
    row("dataset", "addition", "--n", "5", "-o", "{out}", says="is a directory"),
    row("dataset", "addition", "--n", "5", "-o", "{out}/d.csv", says="must end in .parquet"),
    row("dataset", "addition", "--n", "5", "-o", "{out}/nodir/d.parquet", says="does not exist"),
    row("dataset", "addition", "--n", "5", "-o", "{file}/d.parquet", says="is not a directory"),
    row("dataset", "addition", "--n", "5", "-o", "", says="-o is empty"),
    row("dataset", "addition", "--n", "5", "-o", "{out}/{long}.parquet", says="File name too long"),
    row("dataset", "ioi", "--n", "2000", "-o", "{fs}/d.parquet", says="No space left on device", fs=64),
    row("dataset", "addition", "--n", "5", "-o", "{fs}/d.parquet", says="Read-only file system", fs="ro",
        marks=slow),
    # train (every check happens before training starts)
    row("train", "addition", "--threads", "-2", says="--threads: must be an integer in 1.."),
    row("train", "addition", "--threads", "0", says="--threads: must be an integer in 1.."),
    row("train", "addition", "--threads", "100000", says="--threads: must be an integer in 1.."),
    row("train", "addition", "--steps", "0", says="--steps: must be an integer >= 1"),
    row("train", "addition", "--seed", "-1", says="--seed: must be an integer >= 0"),
    row("train", "addition", "--eval-n", "0", says="--eval-n: must be an integer >= 1"),
    row("train", "addition", "--eval-n", "100000000000", says="--eval-n: n must be at most"),
    row("train", "addition", "-o", "{file}", says="is a file; give a directory"),
    row("train", "addition", "-o", "", says="-o is empty"),
    row("train", "addition", "-o", "{out}/{bad}", says="is not valid UTF-8"),
    row("train", "addition", "-o", "{out}/{long}", says="File name too long"),
    row("train", "nosuch", says="no zoo model zoo:nosuch"),
    row("train", "list_update", "--steps", "1", "--eval-n", "5", "--quiet", "-o", "{fs}/t",
        says="Read-only file system", fs="ro", marks=slow),
    row("train", "list_update", "--steps", "2", "--eval-n", "10", "--quiet", "-o", "{fs}/t",
        says="No space left on device", fs=64, marks=slow),
    # eval
    row(*EVAL, "--n", "10", "--device", "cuda", says="has no CUDA device", marks=no_cuda),
    row(*EVAL, "--n", "10", "--device", "nosuch", says="device must be auto, cpu, cuda or cuda:N"),
    row(*EVAL, "--n", "10", "--device", "", says="device must be auto, cpu, cuda or cuda:N"),
    row(*EVAL, "--n", "100000000000", says="n must be at most"),
    row(*EVAL, "--n", "10", "--limit", "-1", says="--limit: must be an integer >= 0"),
    row(*EVAL, "--n", "10", "-o", "{out}", says="is a directory"),
    row("eval", "--task", "addition", "--model", "{out}/{long}", says="File name too long"),
    row("eval", "--task", "nosuch", "--model", "zoo:addition", says="unknown task 'nosuch'"),
    row("eval", "--task", "ioi", "--model", "zoo:addition", "--n", "10", says="outside the model's input vocab"),
    row(*EVAL, "--n", "10", "--param", "digits=9", says="examples are 29 tokens long but the model's n_ctx is 14"),
    row(*EVAL, "--n", "10", "--group-by", "nosuch", says="no label column 'nosuch'"),
    row(*EVAL, "--n", "3000", "--group-by", "a", "-o", "{fs}/e.csv", says="No space left on device", fs=16, marks=slow),
    # ingest
    row(*ING, "--n", "100000000000", "--out", "{out}/s", says="n must be at most"),
    row(*ING, "--n", "16", "--device", "cuda", "--out", "{out}/s", says="no CUDA device", marks=no_cuda),
    row(*ING, "--n", "16", "--batch", "0", "--out", "{out}/s", says="batch must be a positive integer"),
    row(*ING, "--n", "16", "--chunk", "-5", "--out", "{out}/s", says="chunk must be a positive integer"),
    row(*ING, "--n", "16", "--hooks", "nosuch", "--out", "{out}/s", says="unknown hook 'nosuch'"),
    row(*ING, "--n", "16", "--out", "{file}", says="is a file"),
    row(*ING, "--n", "16", "--out", "{out}/{bad}", says="is not valid UTF-8"),
    row(*ING, "--n", "16", "--out", "{out}/{long}", says="File name too long"),
    row(*ING, "--n", "16", "--out", "{add}", says="--n 16 is smaller"),  # a store of the same run, 256 examples
    row(*ING, "--n", "16", "--seed", "7", "--out", "{add}", says="holds a store of another run"),
    row(*ING, "--n", "16", "--out", "{fs}/s", says="not a writable directory", fs="ro", marks=slow),
    row(*ING, "--n", "256", "--chunk", "64", "--out", "{fs}/s", says="No space left on device", fs=600,
        keeps_commits=True, marks=slow),
    # info, verify
    row("info", "{out}/missing", says="no store at"),
    row("info", "", says="store path is empty"),
    row("verify", "", says="store path is empty"),
    row("sql", "{add}", "SELECT 1", "--limit", "99999999999999999999", says="must be at most"),
    row("info", "{file}", says="is not an actstore store"),
    row("info", "{out}/{long}", says="File name too long"),
    row("info", "{out}/{bad}", says="is not valid UTF-8"),
    row("verify", "{out}/missing", says="no store at"),
    row("verify", "{add}", "extra", says="unrecognized arguments: extra"),
    row("info", "{add}", "--json", "extra", says="unrecognized arguments: extra"),
    # sql, breakdown (their -o goes through the shared writer)
    row("sql", "{add}", "SELECT 1", "--limit", "-1", says="--limit: must be an integer >= 0"),
    row("sql", "{add}", "SELECT 1", "-o", "{out}", says="is a directory"),
    row("sql", "{add}", "SELECT 1", "--format", "parquet", says="--format parquet needs -o FILE"),
    row("sql", "{add}", "SELEC 1", says="syntax error"),
    row("sql", "{add}", "SELECT * FROM examples", "--format", "csv",
        says="CSV cannot hold the nested column(s) tokens"),
    row("sql", "{add}", "SELECT * FROM range(100000)", "-o", "{fs}/q.csv", says="No space left on device", fs=16,
        marks=slow),
    row("breakdown", "{add}", "--group-by", "nosuch", says="no label column 'nosuch'"),
    row("breakdown", "{add}", "--group-by", "carry_2", "--input", "{file}", says="is not a readable Parquet file"),
    row("breakdown", "{add}", "--group-by", "carry_2", "-o", "{out}/b.parquet", "--format", "csv",
        says="--format csv contradicts -o"),
    # dla, logit-lens
    row("dla", "{add}", "--limit", "-2", says="--limit: must be an integer >= 0, got -2"),
    row("dla", "{add}", "--limit", "abc", says="--limit: expects an integer"),
    row("dla", "{add}", "--format", "xml", says="invalid choice: 'xml'"),
    row("dla", "{add}", "-o", "{out}", says="is a directory"),
    row("dla", "{add}", "-o", "{out}/nodir/x.csv", says="does not exist"),
    row("dla", "{add}", "-o", "{out}/{long}.csv", says="File name too long"),
    row("dla", "{out}/{bad}", says="is not valid UTF-8"),
    row("dla", "{corrupt_meta}", "--limit", "1", says="is corrupt"),
    row("dla", "{missing_weights}", "--limit", "1", says="is corrupt"),
    row("dla", "{add}", "-o", "{fs}/d.csv", says="No space left on device", fs=64),
    row("dla", "{add}", "-o", "{fs}/d.parquet", says="No space left on device", fs=64, marks=slow),
    row("dla", "{add}", "-o", "{fs}/d.json", says="No space left on device", fs=64, marks=slow),
    row("dla", "{add}", "--format", "table", "-o", "{fs}/d.txt", says="No space left on device", fs=64, marks=slow),
    row("dla", "{add}", "-o", "{fs}/d.csv", says="Read-only file system", fs="ro"),
    row("logit-lens", "{add}", "--limit", "-5", says="--limit: must be an integer >= 0"),
    row("logit-lens", "{add}", "--ln", "nosuch", says="invalid choice: 'nosuch'"),
    # circuit
    row("circuit", "{add}", "--layer", "0", "--head", "0", "--tokens", "", says="--tokens is empty"),
    row("circuit", "{add}", "--layer", "0", "--head", "0", "--tokens", "99999", says="token ids must lie in"),
    row("circuit", "{add}", "--kind", "composition", "--layer", "9", says="--layer does not apply"),
    row("circuit", "{add}", "--kind", "qk", "--layer", "0", "--head", "0", "--mode", "Q", says="--mode does not apply"),
    row("circuit", "{add}", "--layer", "99", "--head", "0", says="layer must be an integer in [0, 2)"),
    row("circuit", "{add}", "--kind", "ov", says="needs --layer and --head"),
    row("circuit", "{missing_weights}", "--layer", "0", "--head", "0", says="is corrupt"),
    # attention
    row("attention", "{add}", "--where", "carry_2=maybe", says="label carry_2 is of type Boolean; give true or false"),
    row("attention", "{add}", "--where", "carry_2=2", says="label carry_2 is of type Boolean"),
    row("attention", "{add}", "--where", "a=1.5", says="label a is of type Int64; give an integer"),
    row("attention", "{add}", "--where", "split=nosuch", says="no example has that value; values: all"),
    row("attention", "{add}", "--where", "carry_2", says="--where expects LABEL=VALUE"),
    row("attention", "{add}", "--where", "nosuch=1", says="'nosuch' is not a label"),
    row("attention", "{add}", "--layers", "", says="--layers is empty"),
    row("attention", "{add}", "--heads", "", says="--heads is empty"),
    row("attention", "{add}", "--layers", "99", says="99 is out of range"),
    row("attention", "{add}", "--group-by", "", says="--group-by is empty"),
    row("attention", "{add}", "--query", "nosuch", says="no token has role 'nosuch'"),
    row("attention", "{add}", "--limit", "-1", says="--limit: must be an integer >= 0"),
    row("attention", "{add}", "-o", "{out}", says="is a directory"),
    row("attention", "{add}", "-o", "{fs}/a.csv", says="No space left on device", fs=64),
    row("attention", "{add}", "-o", "{fs}/a.parquet", says="No space left on device", fs=64, marks=slow),
    # neurons
    row("neurons", "{add}", says="attention-only"),
    row("neurons", "{br}", "--layers", "", says="--layers is empty"),
    row("neurons", "{br}", "--layers", "99", says="99 is not a layer in [0, 3)"),
    row("neurons", "{br}", "--top-k", "0", says="--top-k: must be an integer >= 1"),
    row("neurons", "{br}", "--rank-by", "activation", says="--rank-by applies to --top-k only"),
    row("neurons", "{br}", "--direction", "{file}", says="is not a readable .npy array"),
    row("neurons", "{br}", "--direction", "nosuch", says="is neither 'answer', 'diff'"),
    row("neurons", "{br}", "--through-head", "0.0", says="no MLP layer comes before through_head '0.0'"),
    row("neurons", "{br}", "--where", "failure=maybe", says="no example has that value"),
    row("neurons", "{br}", "--correlate", "failure", says="is String, not numeric"),
    row("neurons", "{ioi}", "--answer", "5", says="expected an answer index"),
    row("neurons", "{br}", "-o", "{fs}/n.csv", says="No space left on device", fs=64, marks=slow),
    # chart
    row("chart", "attention", "{add}", "--layer", "99", "-o", "{out}/c.png", says="layer 99 is not in this 2-layer"),
    row("chart", "attention-roles", "{add}", "--layer", "-1", "-o", "{out}/c.svg", says="layer -1 is not in"),
    row("chart", "attention", "{add}", "--heads", "9.9", "-o", "{out}/c.svg", says="head L9H9 is not in"),
    row("chart", "attention", "{add}", "--heads", "x", "-o", "{out}/c.svg", says="bad head 'x'"),
    row("chart", "dla-heads", "{add}", "--heads", "1.0", "-o", "{out}/c.svg", says="--heads does not apply"),
    row("chart", "dla-heads", "{add}", "--layer", "5", "-o", "{out}/c.svg", says="--layer does not apply"),
    row("chart", "dla-heads", "{add}", "-o", "{out}/c.xyz", says="extension must be one of"),
    row("chart", "dla-heads", "{add}", "-o", "{out}/nodir/c.svg", says="does not exist"),
    row("chart", "dla-heads", "{add}", "-o", "{out}/c.png", "--scale", "0", says="--scale: must be a number above 0"),
    row("chart", "dla-heads", "{add}", "-o", "{out}/c.png", "--scale", "1000", says="at most 10"),
    row("chart", "dla-heads", "{add}", "-o", "{out}/c.svg", "--scale", "2", says="--scale applies to .png"),
    row("chart", "dla-components", "{add}", "-o", "{out}/c.svg", "--top", "0", says="--top: must be an integer"),
    row("chart", "dla-split", "{add}", "-o", "{out}/c.svg", "--group-by", "", says="--group-by is empty"),
    row("chart", "nosuch", "{add}", "-o", "{out}/c.svg", says="unknown chart kind 'nosuch'"),
    row("chart", "ov-circuit", "{add}", "-o", "{out}/c.svg", says="circuit charts need layer and head"),
    row("chart", "neurons", "{br}", "--direction", "{file}", "-o", "{out}/c.svg", says="is not a readable .npy"),
    row("chart", "dla-heads", "{add}", "-o", "{fs}/c.png", says="No space left on device", fs=8),
    row("chart", "dla-heads", "{add}", "-o", "{fs}/c.html", says="Read-only file system", fs="ro", marks=slow),
    # report
    row("report", "{add}", "-o", "{out}", says="is a directory"),
    row("report", "{add}", "-o", "{out}/r.txt", says="must end in .html"),
    row("report", "{add}", "-o", "", says="-o is empty"),
    row("report", "{add}", "-o", "{out}/nodir/r.html", says="does not exist"),
    row("report", "{out}/missing", "-o", "{out}/r.html", says="no store at"),
    row("report", "{missing_weights}", "-o", "{out}/r.html", says="is corrupt"),
    row("report", "{add}", "-o", "{fs}/r.html", says="No space left on device", fs=64, marks=slow),
    row("report", "{add}", "-o", "{fs}/r.html", says="Read-only file system", fs="ro", marks=slow),
    row("breakdown", "{add}", "--group-by", "carry_2", "--value", "", says="--value is empty"),
    # patch / ablate (checked before the model loads or anything is written; see tests/cli/test_interventions.py)
    row("patch", "{add}", "--hook", "bogus", says="unknown hook 'bogus'"),
    row("patch", "{add}", "--hook", "z", "--grain", "layer", says="hook z is swept by head or head,pos"),
    row("patch", "{add}", "--hook", "resid_pre", "--pos", "S2", says="unknown role 'S2'"),
    row("patch", "{br}", "--hook", "resid_pre", "--pos", "open", says="address those positions by index"),
    row("patch", "{add}", "--hook", "mlp_out", says="attention-only"),
    row("patch", "{add}", "--hook", "resid_pre", "--grain", "layer", "--pos", "1", says="--pos picks positions"),
    row("patch", "{add}", "--hook", "resid_pre", "--pos", "99", says="position 99 is outside"),
    row("patch", "{add}", "--examples", "100000", says="100000 examples asked"),
    row("patch", "{add}", "--examples", "0", says="--examples: must be an integer >= 1"),
    row("patch", "{add}", "--metric", "nope", says="metrics must be distinct names"),
    row("patch", "{add}", "--path-to", "9.0", says="receiver 9.0 is not a head of this model"),
    row("patch", "{add}", "--path-to", "0.0", says="receivers in layer 0 have no sender heads"),
    row("patch", "{add}", "--path-to", "logits", "--receiver-input", "q", says="--receiver-input applies to receiver"),
    row("patch", "{add}", "--path-to", "1.0", "--method", "atp", says="--path-to sweeps sender heads"),
    row("patch", "{add}", "--receiver-input", "k", says="--receiver-input applies to path patching"),
    row("patch", "{add}", "--mode", "sideways", says="invalid choice: 'sideways'"),
    row("patch", "{add}", "--model", "zoo:list_update", says="has other weights than store"),
    row("patch", "{add}", "--device", "cuda", says="no CUDA device", marks=no_cuda),
    row("patch", "{out}/missing", says="no store at"),
    row("patch", "{corrupt_meta}", says="is corrupt"),
    row("patch", "{add}", "-o", "{out}/nodir/p.csv", says="does not exist"),
    row("ablate", "{add}", "--method", "zero", "--mean-over", "pos", says="--mean-over applies to --method mean"),
    row("ablate", "{add}", "--mean-over", "label:nosuch", says="no label column 'nosuch'"),
    row("ablate", "{add}", "--mean-over", "bogus", says="--mean-over must be all, pos, role or label:COLUMN"),
    row("ablate", "{add}", "--hook", "q", "--grain", "layer,pos", says="hook q is swept by head or head,pos"),
    row("ablate", "{add}", "--method", "shuffle", says="invalid choice: 'shuffle'"),
    # sql --attach / compare (refused before any attribution is computed)
    row("sql", "{add}", "SELECT 1", "--attach", "b", says="--attach expects ALIAS=STORE"),
    row("sql", "{add}", "SELECT 1", "--attach", "main={ioi}", says="attach alias 'main'"),
    row("sql", "{add}", "SELECT 1", "--attach", "dla={ioi}", says="is the name of a view"),
    row("sql", "{add}", "SELECT 1", "--attach", "b={out}/missing", says="attach 'b': no store at"),
    row("sql", "{add}", "SELECT * FROM b.dlaa", "--attach", "b={ioi}", says="attached: b"),
    row("sql", "{add}", "DROP SCHEMA b CASCADE", "--attach", "b={ioi}", says="refused"),
    row("compare", "{add}", "{ioi}", says="A is task 'addition', B is task 'ioi'"),
    row("compare", "{add}", "{out}/missing", says="no store at"),
    row("compare", "{ioi}", "{ioi}", "--corrupted", says="corrupted twins"),
    row("compare", "{add}", "{br}", "--level", "neuron", says="invalid choice: 'neuron'"),
    row("compare", "{corrupt_meta}", "{add}", says="is corrupt"),
    row("compare", "{add}", "{add}", "-o", "{out}/nodir/c.csv", says="does not exist"),
    # no such command
    row("nosuch", says="invalid choice: 'nosuch'"),
]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    """Small zoo stores (n <= 256) and two damaged copies of the addition store."""
    root = tmp_path_factory.mktemp("bad-input-stores")
    made = {
        "add": actstore.ingest("addition", "zoo:addition", 256, 0, root / "add", chunk=128, quiet=True).path,
        "ioi": actstore.ingest("ioi", "zoo:lm", 32, 0, root / "ioi", quiet=True).path,
        "br": actstore.ingest("brackets", "zoo:brackets", 32, 0, root / "br", quiet=True).path,
    }
    corrupt = shutil.copytree(made["add"], root / "corrupt_meta")
    part = next((corrupt / "meta" / "examples").glob("*.parquet"))
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(data)
    missing = shutil.copytree(made["add"], root / "missing_weights")
    chunks = list((missing / "params").glob("*/c.*"))  # weight chunks are files c.0.0 beside each zarr.json
    assert chunks, "no weight chunk to delete: has the params/ layout changed?"
    for chunk in chunks:
        chunk.unlink()
    return {**{k: str(v) for k, v in made.items()}, "corrupt_meta": str(corrupt), "missing_weights": str(missing)}


def expand(argv: tuple[str, ...], values: dict[str, str]) -> list[str]:
    out = []
    for arg in argv:
        for key, value in values.items():
            arg = arg.replace("{" + key + "}", value)
        out.append(arg)
    return out


def files_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def partial_files(files: dict[str, int]) -> list[str]:
    """Temporary or empty files: what a write cut short leaves."""
    return [f for f, size in files.items() if size == 0 or ".tmp" in f or ".creating" in f]


@pytest.mark.parametrize("case", ROWS)
def test_bad_input_is_one_line_exit_2_and_nothing_left(case: Row, stores, tmp_path, monkeypatch, capsys):
    out = tmp_path / "scratch"
    out.mkdir()
    (out / "file").write_text("not a store, not a .npy, not Parquet\n")
    monkeypatch.chdir(out)
    values = {**stores, "out": str(out), "file": str(out / "file"), "long": LONG, "bad": BAD}
    before = files_under(out)
    store_root = Path(stores["add"]).parent
    if case.fs is None:
        code = main(expand(case.argv, values))
        err = capsys.readouterr().err
        left: dict[str, int] = {}
    else:
        args = expand(case.argv, values)
        run = run_cli_on_readonly_dir(args) if case.fs == "ro" else run_cli_on_small_fs(args, int(case.fs))
        code, err, left = run.returncode, run.stderr, run.files
    lines = [line for line in err.splitlines() if line.strip()]
    prefix = f"actstore {case.argv[0]}: error: " if case.argv[0] in COMMANDS else "actstore: error: "
    assert len(lines) == 1, f"stderr is not one line:\n{err}"
    assert lines[0].startswith(prefix) and case.fragment in lines[0], lines[0]
    assert code == 2, lines[0]
    assert files_under(out) == before, "the scratch directory changed"
    assert not partial_files(files_under(store_root)), "a store holds a temporary or empty file"
    if case.keeps_commits:
        assert left and not partial_files(left), f"partial files on the full disk: {partial_files(left)}"
    else:
        assert left == {}, f"files left on the fault filesystem: {sorted(left)}"


@pytest.mark.slow
def test_derived_cache_on_a_full_disk_is_skipped_not_half_written(stores, tmp_path):
    """A query whose derived/ cache cannot be written still answers, and leaves no partial cache file."""
    store = shutil.copytree(stores["add"], tmp_path / "store")
    shutil.rmtree(store / "derived", ignore_errors=True)
    run = run_cli_on_small_fs(["dla", "{fs}/store", "--limit", "3", "--format", "csv"], 16 * 1024,
                              copy_in=[store], free_kb=1)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("\n") == 4
    assert not [f for f in run.files if f.startswith("store/derived/")], sorted(run.files)


def test_a_query_on_an_unfinished_store_warns_in_one_line(tmp_path, stores):
    store = tmp_path / "partial"
    shutil.copytree(stores["add"], store)
    (store / "_commits/complete.json").unlink()
    last = max((store / "_commits").glob("0*.json"))
    last.unlink()  # as an ingest interrupted before its last commit
    proc = subprocess.run([sys.executable, "-m", "actstore.cli", "dla", str(store), "--level", "layer", "--mean"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("actstore dla: warning: store ") and "chunks committed" in lines[0]
    verify = subprocess.run([sys.executable, "-m", "actstore.cli", "verify", str(store)],
                            capture_output=True, text=True)
    assert verify.returncode == 1 and "INCOMPLETE:" in verify.stderr

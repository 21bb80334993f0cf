"""`actstore dataset`: the Parquet it writes, and one-line errors with a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from actstore.cli import main
from actstore.datasets import get_task

BASE_COLUMNS = ["example_id", "text", "tokens", "length", "answer_positions", "answer_tokens", "counter_tokens",
                "corrupted_tokens"]
LABELS = {
    "addition": ["a", "b", "sum", "carry_0", "carry_1", "carry_2", "any_carry"],
    "list_update": ["idx", "elt", "changed"],
    "brackets": ["balanced", "failure", "open_proportion", "starts_open", "n_brackets"],
    "ioi": ["io", "s", "template", "order", "place", "object", "s1_pos", "io_pos", "s2_pos", "end_pos"],
    "days": ["kind", "today", "answer", "template", "index", "offset", "subject"],
}


@pytest.mark.parametrize("task", sorted(LABELS))
def test_writes_one_row_per_example_with_the_documented_columns(task: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / f"{task}.parquet"
    assert main(["dataset", task, "--n", "64", "--seed", "3", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 64 {task} examples to {out}"
    frame = pl.read_parquet(out)
    assert frame.columns[: len(BASE_COLUMNS)] == BASE_COLUMNS
    assert set(LABELS[task]) <= set(frame.columns)
    assert frame["example_id"].to_list() == list(range(64))
    # the same rows as the Python API gives
    data = get_task(task).generate(64, 3)
    assert frame.equals(data.to_frame())
    assert frame["tokens"].to_list() == [row[:n].tolist() for row, n in zip(data.tokens, data.lengths)]
    assert [len(t) for t in frame["tokens"].to_list()] == frame["length"].to_list()
    assert not list(tmp_path.glob("*.tmp"))


def test_params_are_parsed_and_passed_to_the_task(tmp_path: Path) -> None:
    out = tmp_path / "a.parquet"
    argv = ["dataset", "addition", "--n", "20", "--param", "digits=2", "--param", "max_operand=30", "-o", str(out)]
    assert main(argv) == 0
    frame = pl.read_parquet(out)
    assert frame["text"].str.len_chars().to_list() == [8] * 20
    assert frame["a"].max() < 30 and "carry_1" not in frame.columns
    out2 = tmp_path / "i.parquet"
    assert main(["dataset", "ioi", "--n", "10", "--param", "corrupt=abc", "-o", str(out2)]) == 0
    assert pl.read_parquet(out2)["corrupted"].all()


def test_same_seed_same_file_contents(tmp_path: Path) -> None:
    paths = [tmp_path / f"{k}.parquet" for k in range(3)]
    for path, seed in zip(paths, (1, 1, 2)):
        assert main(["dataset", "brackets", "--n", "100", "--seed", str(seed), "-o", str(path)]) == 0
    a, b, c = (pl.read_parquet(p) for p in paths)
    assert a.equals(b) and not a.equals(c)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["dataset", "bracket", "--n", "5"], "unknown task 'bracket'; did you mean 'brackets'?"),
        (["dataset", "brackets", "--n", "5", "--param", "max_len=3"], "brackets: max_len must be an even integer"),
        (["dataset", "brackets", "--n", "5", "--param", "maxlen=4"], "brackets: bad parameter"),
        (["dataset", "brackets", "--n", "5", "--param", "max_len"], "--param expects KEY=VALUE, got 'max_len'"),
        (["dataset", "days", "--n", "0"], "n must be a positive integer, got 0"),
        (["dataset", "ioi", "--seed", "-2"], "seed must be a non-negative integer, got -2"),
    ],
)
def test_bad_task_or_param_is_one_stderr_line(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.parquet"
    assert main([*argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("actstore dataset: error: ") and message in err
    assert not out.exists()


@pytest.mark.parametrize("where", ["missing_dir", "parent_is_file", "is_dir", "read_only_fs"])
def test_unwritable_output_is_one_stderr_line(where: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    out = {
        "missing_dir": tmp_path / "nope" / "x.parquet",
        "parent_is_file": tmp_path / "file" / "x.parquet",
        "is_dir": tmp_path,
        "read_only_fs": Path("/proc/actstore-test.parquet"),
    }[where]
    assert main(["dataset", "addition", "--n", "5", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("actstore dataset: error: ") and str(out) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_console_script_exit_codes(tmp_path: Path) -> None:
    """The installed `actstore` entry point, as a user runs it."""
    exe = Path(sys.executable).with_name("actstore")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run([exe, "dataset", "list_update", "--n", "7", "-o", tmp_path / "l.parquet"],
                        capture_output=True, text=True, env=env)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert pl.read_parquet(tmp_path / "l.parquet").height == 7
    bad = subprocess.run([exe, "dataset", "nosuchtask", "-o", tmp_path / "n.parquet"],
                         capture_output=True, text=True, env=env)  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "unknown task 'nosuchtask'" in bad.stderr
    assert np.array_equal(sorted(p.name for p in tmp_path.iterdir()), ["l.parquet"])

"""The reader install (`pip install actstore`, no `[models]` extra): every reading command works on a store
without torch, TransformerLens, transformers, tokenizers or safetensors, and every model command says in one
line which extra to install.

Two checks, both on stores ingested here with the full install:
- in this venv, with an import hook that makes the model-side libraries missing (tests/reader_driver.py):
  the reading commands run and import none of them; the model commands fail with the one line;
- in a fresh venv (`python -m venv --without-pip`) holding only the distributions that pyproject.toml's
  base dependencies require, found through their metadata and linked from this venv's site-packages (no
  download, no registry): `import torch` fails there, and dla, sql and report run on a store.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import actstore
from actstore.errors import MODEL_MODULES

sys.path.insert(0, str(Path(__file__).resolve().parent / "charts"))
from stores import make_store  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("reader_driver.py")
EXTRA_LINE = "error: this command needs the model extra: pip install 'actstore[models]'"


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """A zoo addition store with a stored ablation sweep, and a tiny-model ioi store (MLP, word tokens)."""
    from actstore.interventions import ablate

    root = tmp_path_factory.mktemp("reader")
    add = actstore.ingest("addition", "zoo:addition", n=64, seed=0, out=root / "addition", chunk=32, quiet=True)
    ablate(add, "z", method="mean", examples=16)
    make_store("ioi", root)
    return {"addition": root / "addition", "ioi": root / "ioi"}


def drive(python: str | Path, tmp: Path, commands: list[list[str]], *, block: bool, store: Path | None = None,
          env: dict[str, str] | None = None) -> dict:
    spec, result = tmp / "spec.json", tmp / "result.json"
    spec.write_text(json.dumps({"block": block, "commands": commands, "store": str(store) if store else None}))
    proc = subprocess.run([str(python), str(DRIVER), str(spec), str(result)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(result.read_text())


def assert_ok(runs: list[dict]) -> None:
    failed = [f"{' '.join(r['argv'])}: rc {r['rc']}: {r['stderr'][-1500:]}" for r in runs if r["rc"] != 0]
    assert not failed, "\n".join(failed)


def model_commands(store: Path, tmp: Path) -> list[list[str]]:
    return [
        ["ingest", "--task", "addition", "--model", "zoo:addition", "--n", "8", "--out", str(tmp / "new")],
        ["train", "addition", "-o", str(tmp / "train")],
        ["eval", "--task", "addition", "--model", "zoo:addition", "--n", "8"],
        ["patch", str(store), "--examples", "4"],
        ["ablate", str(store), "--hook", "z", "--examples", "4"],
        ["dataset", "ioi", "--n", "4", "-o", str(tmp / "ioi.parquet")],  # a text task: the word tokenizer
    ]


def assert_extra_line(runs: list[dict]) -> None:
    for r in runs:
        assert r["rc"] == 2, r
        assert r["stderr"] == f"actstore {r['argv'][0]}: {EXTRA_LINE}\n", r


@pytest.fixture(scope="module")
def blocked(stores, tmp_path_factory) -> dict:
    """One process, model libraries blocked: every reading command on both stores, then the model commands."""
    tmp = tmp_path_factory.mktemp("blocked")
    add, ioi = str(stores["addition"]), str(stores["ioi"])
    reading = [
        ["--help"],
        ["info", add], ["verify", add],
        ["sql", add, "SELECT kind, count(*) AS n FROM interventions GROUP BY 1", "--format", "csv"],
        ["sql", add, "SELECT carry_2, component, avg(value) FROM dla JOIN examples USING (example_id) "
                     "WHERE answer_idx = 2 GROUP BY ALL", "--format", "csv"],
        ["dla", add, "--level", "head", "--mean"], ["logit-lens", add, "--mean"],
        ["circuit", add, "--kind", "ov", "--layer", "0", "--head", "0", "--limit", "5"],
        ["attention", add, "--layers", "0", "--limit", "5"],
        ["breakdown", add, "--group-by", "carry_2"],
        ["chart", "dla-split", add, "--group-by", "carry_2", "-o", str(tmp / "split.html")],
        ["report", add, "-o", str(tmp / "addition.html")],
        ["compare", add, add, "--limit", "5"],
        ["probe", add, "--label", "carry_2"], ["pca", add, "--limit", "5"],
        ["weights", "matrix", add, "OV:0.0", "--limit", "5"], ["direction", "list", add],
        ["dataset", "addition", "--n", "8", "-o", str(tmp / "addition.parquet")],  # numeric tasks need no tokenizer
        ["verify", ioi], ["neurons", ioi, "--limit", "5"], ["dla", ioi, "--level", "neuron", "--limit", "5"],
        ["report", ioi, "-o", str(tmp / "ioi.html")],  # a text task's report spec, without its tokenizer
    ]
    result = drive(sys.executable, tmp, reading + model_commands(stores["addition"], tmp), block=True,
                   store=stores["addition"])
    result["reading"], result["model"] = result["runs"][:len(reading)], result["runs"][len(reading):]
    return result


def test_reading_commands_need_no_model_library(blocked) -> None:
    assert_ok(blocked["reading"])
    assert blocked["model_modules"] == []
    assert {"ablate"} == {line.split(",")[0] for line in blocked["reading"][3]["stdout"].splitlines()[1:]}
    assert "<html" in (Path(blocked["reading"][11]["argv"][-1]).read_text()[:500]).lower()


def test_model_commands_name_the_extra_in_one_line(blocked) -> None:
    assert_extra_line(blocked["model"])


def test_python_api_reads_and_names_the_extra(blocked) -> None:
    api = blocked["api"]
    assert api["examples"] == 64 and api["dla_rows"] > 0
    assert api["ingest"].startswith("ModelsExtraError: actstore.ingest needs the model extra (torch is not installed)")


def test_models_extra_lists_every_model_library() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    models = {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["models"]}
    wanted = {canonicalize_name(m) for m in MODEL_MODULES}
    assert wanted <= models
    assert not (base & models)


def reader_closure() -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions that pyproject.toml's base dependencies need, transitively (by metadata)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found: dict[str, importlib.metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo = [(Requirement(r), "") for r in project["dependencies"]]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        for e in ("", *sorted(req.extras)):
            if (name, e) in done:
                continue
            done.add((name, e))
            dist = found.setdefault(name, importlib.metadata.distribution(req.name))
            todo.extend((Requirement(r), e) for r in dist.requires or [])
    return found


def make_reader_venv(path: Path) -> Path:
    """A fresh venv holding only the reader's distributions (linked from this venv) and actstore's source."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    site = path / Path(sysconfig.get_paths()["purelib"]).relative_to(sys.prefix)
    assert site.is_dir(), site
    for dist in reader_closure().values():
        tops = {Path(f).parts[0] for f in dist.files or []} - {"..", "__pycache__"}
        assert tops, f"{dist.metadata['Name']}: no RECORD to link its files from"
        for top in tops:
            if not (site / top).exists():
                (site / top).symlink_to(Path(str(dist.locate_file(top))))
    (site / "actstore").symlink_to(REPO / "actstore")
    return path / "bin" / "python"


def test_fresh_reader_venv_runs_dla_sql_report(stores, tmp_path) -> None:
    closure = reader_closure()
    assert not {canonicalize_name(m) for m in MODEL_MODULES} & set(closure), sorted(closure)
    python = make_reader_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True, env=env, timeout=60)
    assert probe.returncode == 1 and "No module named 'torch'" in probe.stderr
    add = str(stores["addition"])
    reading = [
        ["dla", add, "--level", "head", "--mean", "--format", "csv"],
        ["sql", add, "SELECT answer_idx, avg(correct::int) AS acc FROM outputs GROUP BY 1 ORDER BY 1",
         "--format", "csv"],
        ["report", add, "-o", str(tmp_path / "report.html")],
    ]
    result = drive(python, tmp_path, reading + model_commands(stores["addition"], tmp_path)[:1], block=False,
                   store=stores["addition"], env=env)
    assert_ok(result["runs"][:3])
    assert result["runs"][1]["stdout"].splitlines()[0] == "answer_idx,acc"
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert_extra_line(result["runs"][3:])
    assert result["model_modules"] == []
    assert "(torch is not installed)" in result["api"]["ingest"]

"""`actstore train` and `actstore eval` through the entry point; training is deterministic."""

from __future__ import annotations

import io
import json

import polars as pl
import pytest
from safetensors.torch import load_file

from actstore.cli import main
from actstore.models import zoo_names
from actstore.models.train import train


def test_train_of_an_unknown_name_lists_the_zoo(capsys):
    assert main(["train", "nosuch"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and all(name in err for name in zoo_names()), err


def test_eval_prints_accuracy_by_label(capsys):
    assert main(["eval", "--task", "list_update", "--model", "zoo:list_update", "--n", "300", "--seed", "5",
                 "--format", "csv"]) == 0
    table = pl.read_csv(io.StringIO(capsys.readouterr().out))
    assert table.columns[:4] == ["task", "split", "value", "examples"]
    overall = table.filter(pl.col("split") == "all").row(0, named=True)
    assert overall["examples"] == 300 and overall["answers"] == 900 and overall["accuracy"] >= 0.99
    assert set(table["split"]) == {"all", "answer", "idx", "changed"}
    assert sorted(table.filter(pl.col("split") == "idx")["value"].cast(str).to_list()) == ["0", "1", "2"]


@pytest.mark.parametrize("argv, words", [
    (["eval", "--task", "addition", "--model", "zoo:nope"], ["zoo:nope", "zoo:addition"]),
    (["eval", "--task", "addition", "--model", "zoo:addition", "--seed", "10001"], ["training seed"]),
    (["eval", "--task", "nope", "--model", "zoo:addition"], ["nope"]),
    (["train", "nope"], ["zoo:nope"]),
    (["train", "list_update", "--steps", "0"], ["--steps"]),
])  # fmt: skip
def test_errors_are_one_line(capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for w in words:
        assert w in err


def test_training_is_deterministic(tmp_path):
    a = train("list_update", steps=4, out=tmp_path / "a", progress=False, eval_n=32)
    b = train("list_update", steps=4, out=tmp_path / "b", progress=False, eval_n=32)
    c = train("list_update", steps=4, seed=1, out=tmp_path / "c", progress=False, eval_n=32)
    wa, wb, wc = (load_file(str(r.weights)) for r in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all((wa[k] == wb[k]).all() for k in wa)
    assert any((wa[k] != wc[k]).any() for k in wa)
    assert a.record["training"]["loss_curve"] == b.record["training"]["loss_curve"]


@pytest.mark.slow
def test_train_command_reduces_loss(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "list_update", "--steps", "300", "-o", str(out), "--quiet", "--eval-n", "500"])
    printed = capsys.readouterr().out
    assert "trained zoo:list_update" in printed and code in (0, 1)
    record = json.loads((out / "list_update.json").read_text())
    curve = [v for _, v in sorted(record["training"]["loss_curve"].items(), key=lambda kv: int(kv[0]))]
    assert curve[0] > 3.5 and record["training"]["final_loss"] < 0.5 * curve[0]
    assert record["training"]["steps"] == 300 and record["eval"][0]["n"] == 500
    assert main(["eval", "--task", "list_update", "--model", str(out), "--n", "100", "--format", "csv"]) == 0

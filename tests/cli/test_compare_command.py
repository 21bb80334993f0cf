"""`actstore compare A B`: the table compare() returns, in every output format; refusals are one line."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import actstore
from actstore.cli import main
from actstore.query.compare import COLUMNS, compare
from actstore.query.dla import dla


def tiny_store(path: Path, model_seed: int) -> Path:
    """24 addition examples (seed 0) through a 2-layer LN + MLP random model of `model_seed`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        model = HookedTransformer(HookedTransformerConfig(
            n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=32, n_ctx=16, d_vocab=12, act_fn="relu",
            normalization_type="LN", seed=model_seed, device="cpu"))
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    actstore.ingest("addition", model, 24, 0, path, chunk=10, dtype="float32", quiet=True,
                    model_spec=f"tiny{model_seed}")
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("cli-compare")
    return str(tiny_store(root / "a", 1)), str(tiny_store(root / "b", 2))


def test_csv_equals_compare_and_numpy(stores, capsys):
    a, b = stores
    assert main(["compare", a, b, "--format", "csv"]) == 0
    got = pl.read_csv(io.StringIO(capsys.readouterr().out))
    assert got.columns == list(COLUMNS) and got.height == (2 + 2 * 2 + 2 + 2) * 4  # components x answers
    want = compare(actstore.open_store(a), actstore.open_store(b))
    assert got["component"].to_list() == want["component"].to_list()
    for col in ("mean_a", "mean_b", "change", "std", "ci_low", "ci_high"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-12, err_msg=col)
    # one row by hand: the change of L1H0 at answer 2 is the mean of the per-example differences
    ta, tb = (dla(actstore.open_store(s)).filter((pl.col("component") == "L1H0") & (pl.col("answer_idx") == 2))
              .sort("example_id")["value"].to_numpy() for s in (a, b))
    row = got.filter((pl.col("component") == "L1H0") & (pl.col("answer_idx") == 2))
    np.testing.assert_allclose(row["change"].item(), np.mean(tb - ta), rtol=1e-9)
    assert row["n"].item() == 24


def test_layer_level_parquet_and_limit(stores, tmp_path, capsys):
    a, b = stores
    out = tmp_path / "cmp.parquet"
    assert main(["compare", a, b, "--level", "layer", "-o", str(out)]) == 0
    assert f"wrote 24 rows to {out}" in capsys.readouterr().err  # 6 components x 4 answers
    got = pl.read_parquet(out)
    want = compare(actstore.open_store(a), actstore.open_store(b), level="layer")
    assert got.equals(want)
    assert main(["compare", a, b, "--level", "layer", "--limit", "3", "--format", "json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and '"component":"' + want["component"][0] + '"' in lines[0]


def test_a_store_against_itself_is_zero(stores, capsys):
    a, _ = stores
    assert main(["compare", a, a, "--format", "csv"]) == 0
    got = pl.read_csv(io.StringIO(capsys.readouterr().out))
    assert (got["change"] == 0).all() and (got["n"] == 24).all()


def test_refusals_are_one_line_and_write_nothing(stores, tmp_path, capsys):
    a, b = stores
    out = tmp_path / "r.csv"
    for argv, says in (
        ([a, b, "--corrupted"], "corrupted twins"),
        ([a, str(tmp_path / "missing")], "no store at"),
        ([a, b, "--level", "neuron"], "invalid choice: 'neuron'"),
        ([a, b, "--target", "logit"], "invalid choice: 'logit'"),
        ([a, b, "--format", "parquet"], "--format parquet needs -o FILE"),
    ):
        assert main(["compare", *argv, "-o", str(out)] if "--format" not in argv else ["compare", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("actstore compare: error: ") and says in err, err
        assert not out.exists()

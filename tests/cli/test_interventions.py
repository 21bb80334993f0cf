"""`actstore patch` / `actstore ablate`: the printed summary is the stored rows' summary, reruns are
cache hits, attribution patching reports its agreement, and refused input writes nothing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import actstore
from actstore.cli import main
from actstore.query.interventions import interventions, sweeps


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-interventions")
    return actstore.ingest("addition", "zoo:addition", 24, 0, root / "add", chunk=12, quiet=True).path


def run_csv(argv: list[str], capsys) -> tuple[int, pl.DataFrame, str]:
    code = main(argv + ["--format", "csv", "--quiet"])
    out = capsys.readouterr()
    return code, pl.read_csv(io.StringIO(out.out)) if out.out else pl.DataFrame(), out.err


def test_patch_summary_is_the_mean_of_the_stored_rows_and_a_rerun_is_a_cache_hit(store, capsys):
    argv = ["patch", str(store), "--hook", "resid_pre", "--grain", "layer,pos", "--examples", "8",
            "--metric", "logit_diff,loss"]
    code, summary, err = run_csv(argv, capsys)
    assert code == 0, err
    rows = interventions(actstore.open_store(store))
    assert rows["example_id"].unique().sort().to_list() == list(range(8))
    assert set(rows["metric"].unique()) == {"logit_diff", "loss"}
    # every position of the 14-token addition prompt, by its role (a0 .. c3), at both layers
    assert summary.height == 2 * 14 * 4 * 2 and set(summary["role"].unique()) >= {"a0", "=", "c3"}
    one = summary.filter((pl.col("layer") == 1) & (pl.col("role") == "b3") & (pl.col("answer_idx") == 0)
                         & (pl.col("metric") == "logit_diff")).row(0, named=True)
    raw = rows.filter((pl.col("layer") == 1) & (pl.col("role") == "b3") & (pl.col("answer_idx") == 0)
                      & (pl.col("metric") == "logit_diff"))
    value, clean, corr = (raw[c].cast(pl.Float64).mean() for c in ("value", "clean", "corrupted"))
    assert one["value"] == pytest.approx(value) and one["n"] == 8
    assert one["score"] == pytest.approx((value - corr) / (clean - corr))
    # read back, not recomputed: a model with other weights would be refused if it were loaded
    code, again, err = run_csv(argv + ["--model", "zoo:list_update"], capsys)
    assert code == 0 and again.equals(summary), err
    assert sweeps(actstore.open_store(store)).height == 1


def test_per_example_rows_to_parquet(store, tmp_path, capsys):
    out = tmp_path / "rows.parquet"
    code = main(["ablate", str(store), "--hook", "z", "--method", "zero", "--examples", "4", "--per-example",
                 "--metric", "correct_logit", "-o", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    got = pl.read_parquet(out)
    assert got.columns[:4] == ["sweep", "kind", "hook", "layer"] and got["kind"].unique().to_list() == ["ablate"]
    n_heads = actstore.open_store(store).arch.n_heads * actstore.open_store(store).arch.n_layers
    assert got.height == n_heads * 4 * actstore.open_store(store).n_answers
    assert got["pos"].null_count() == got.height  # head grain: no position


def test_attribution_patching_reports_agreement_with_the_stored_exact_sweep(store, capsys):
    base = ["patch", str(store), "--hook", "z", "--grain", "head", "--examples", "8", "--metric", "logit_diff"]
    code, _, err = run_csv(base + ["--method", "atp"], capsys)
    assert code == 0 and "no exact sweep of z by head" in err
    code, _, _ = run_csv(base, capsys)
    code, atp, err = run_csv(base + ["--method", "atp"], capsys)  # cache hit, now with an exact sweep to compare
    assert code == 0
    line = next(x for x in err.splitlines() if "Spearman" in x)
    rho = float(line.split("Spearman ")[1].split(",")[0])
    assert -1.0 <= rho <= 1.0 and np.isfinite(rho)


@pytest.mark.parametrize("argv", [
    ["patch", "{s}", "--hook", "bogus"],
    ["patch", "{s}", "--model", "zoo:list_update"],
    ["patch", "{s}", "--hook", "resid_pre", "--pos", "S2"],
    ["ablate", "{s}", "--mean-over", "label:nosuch"],
])
def test_refused_sweeps_write_nothing_into_the_store(tmp_path, store, argv, capsys):
    import shutil

    copy = shutil.copytree(store, tmp_path / "copy")
    shutil.rmtree(copy / "interventions", ignore_errors=True)
    code = main([a.replace("{s}", str(copy)) for a in argv])
    assert code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (copy / "interventions").exists()


def test_chart_sweep_draws_a_stored_sweep_and_names_the_choices(store, tmp_path, capsys):
    import shutil

    copy = shutil.copytree(store, tmp_path / "copy")
    shutil.rmtree(copy / "interventions", ignore_errors=True)
    assert main(["chart", "sweep", str(copy), "-o", str(tmp_path / "none.svg")]) == 2
    assert "holds 0 complete sweeps" in capsys.readouterr().err
    assert main(["ablate", str(copy), "--hook", "z", "--method", "zero", "--examples", "4", "--quiet",
                 "--metric", "loss", "--format", "csv"]) == 0
    capsys.readouterr()
    assert main(["chart", "sweep", str(copy), "-o", str(tmp_path / "s.html")]) == 0
    html = (tmp_path / "s.html").read_text()
    assert "Ablation of z (head)" in html and "effect (value - clean) of loss" in html
    assert main(["chart", "sweep", str(copy), "--sweep", "0123456789abcdef", "-o", str(tmp_path / "x.svg")]) == 2
    assert "no complete sweep '0123456789abcdef'" in capsys.readouterr().err

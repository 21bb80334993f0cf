"""`actstore sql` and `actstore breakdown` through the command line entry point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import csv_out, processed_model

import actstore
from actstore.cli import main
from actstore.query import dla


def tiny_addition_store(path: Path, task: str = "addition") -> Path:
    """A 2-layer LN + MLP random model (processed as the zoo is) on 24 addition examples, chunks of 10
    (`task`: another registered task on addition's tokens, e.g. tests/no_counter.py's)."""
    model = processed_model(
        n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=32, n_ctx=16, d_vocab=12, act_fn="relu",
        normalization_type="LN", seed=1)
    actstore.ingest(task, model, 24, 0, path, chunk=10, dtype="float32", quiet=True, model_spec="tiny")
    return path


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return tiny_addition_store(tmp_path_factory.mktemp("cli-sql") / "store")


def one_line_error(capsys, argv: list[str], *fragments: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"actstore {argv[0]}: error: "), err
    for f in fragments:
        assert f in err, err


def test_sql_the_issue_query(capsys, store_path):
    q = ("SELECT component, avg(value) AS v FROM dla JOIN examples USING (example_id) WHERE carry_2 "
         "GROUP BY component ORDER BY component")
    got = csv_out(capsys, ["sql", str(store_path), q, "--format", "csv"])
    store = actstore.open_store(store_path)
    want = (dla(store).join(store.examples.select("example_id", "carry_2"), on="example_id")
            .filter(pl.col("carry_2")).group_by("component").agg(v=pl.col("value").mean()).sort("component"))
    assert got["component"].to_list() == want["component"].to_list()
    np.testing.assert_allclose(got["v"], want["v"], rtol=1e-9)


def test_sql_derived_parameters_and_output_files(capsys, store_path, tmp_path):
    out = tmp_path / "layers.parquet"
    assert main(["sql", str(store_path), "SELECT DISTINCT component FROM dla ORDER BY component",
                 "--dla-level", "layer", "-o", str(out)]) == 0
    assert "wrote 6 rows" in capsys.readouterr().err
    assert pl.read_parquet(out)["component"].to_list() == ["attn0", "attn1", "embed", "mlp0", "mlp1", "pos_embed"]
    assert main(["sql", str(store_path), "SELECT count(*) AS n FROM tokens", "--format", "json"]) == 0
    assert capsys.readouterr().out.strip() == '{"n":336}'  # 24 examples x 14 tokens


def test_sql_errors(capsys, store_path, tmp_path):
    one_line_error(capsys, ["sql", str(store_path), "SELECT valu FROM dla"], '"valu"',
                   "dla(example_id, answer_idx, answer_pos, target, component, layer, head, value)")
    one_line_error(capsys, ["sql", str(store_path), "SELECT * FROM logitlens"], "logitlens",
                   "Did you mean 'logit_lens'?", "available views: examples, tokens, outputs, dla")
    one_line_error(capsys, ["sql", str(store_path), "SELEKT 1"], "SQL syntax error")
    one_line_error(capsys, ["sql", str(tmp_path / "nope"), "SELECT 1"], "no store at")
    one_line_error(capsys, ["sql", str(store_path), "SELECT 1", "--format", "parquet"], "needs -o FILE")


def test_breakdown_by_label(capsys, store_path):
    got = csv_out(capsys, ["breakdown", str(store_path), "--group-by", "carry_2", "--format", "csv"])
    store = actstore.open_store(store_path)
    counts = dict(store.examples.group_by("carry_2").len().iter_rows())
    assert got.columns == ["carry_2", "target", "answer_idx", "component", "layer", "head", "mean", "std", "n",
                           "ci_low", "ci_high"]
    for label, n in counts.items():
        assert got.filter(pl.col("carry_2") == label)["n"].unique().to_list() == [n]
    two = csv_out(capsys, ["breakdown", str(store_path), "--group-by", "carry_1", "--group-by", "carry_2",
                           "--of", "logit-lens", "--format", "csv"])
    assert {"carry_1", "carry_2", "stage", "layer"} <= set(two.columns)
    assert two.filter(pl.col("stage") == "resid_post")["n"].sum() == 24 * store.n_answers


def test_breakdown_of_a_parquet_file(capsys, store_path, tmp_path):
    f = tmp_path / "d.parquet"
    assert main(["dla", str(store_path), "--level", "layer", "-o", str(f)]) == 0
    capsys.readouterr()
    got = csv_out(capsys, ["breakdown", str(store_path), "--group-by", "any_carry", "--input", str(f),
                           "--format", "csv"])
    assert set(got["component"]) == {"embed", "pos_embed", "attn0", "mlp0", "attn1", "mlp1"}
    one_line_error(capsys, ["breakdown", str(store_path), "--group-by", "carry_7"], "no label column 'carry_7'",
                   "carry_2")
    one_line_error(capsys, ["breakdown", str(store_path), "--group-by", "a", "--input", str(tmp_path / "x.parquet")],
                   "is not a file")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from Linux /proc")
def test_ctrl_c_stops_a_running_query_with_exit_130(store_path):
    """DuckDB holds the main thread in C++; the query runs on a worker so that SIGINT still stops it."""
    import signal
    import subprocess
    import sys
    import time

    query = "SELECT count(*) FROM range(100000000000::bigint) a WHERE a.range % 7 = 3"  # minutes of work
    proc = subprocess.Popen([sys.executable, "-m", "actstore.cli", "sql", str(store_path), query],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the signal must land while the query runs, not during the imports: wait for CPU time, which a
    # loaded machine does not stretch the way it stretches a fixed sleep (the imports take ~1-1.5 s of it)
    deadline = time.monotonic() + 120
    while cpu_seconds(proc.pid) < 4.0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "actstore sql: interrupted" and out == ""


def test_progress_bar_off_and_deep_nesting_refused(capsys, store_path):
    store = actstore.open_store(store_path)
    assert store.sql("SELECT current_setting('enable_progress_bar')").fetchall() == [(False,)]
    deep = "SELECT * FROM " + "(SELECT * FROM " * 600 + "examples" + ") t" * 600
    assert main(["sql", str(store_path), deep]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot be inspected" in err

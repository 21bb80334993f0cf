"""Shared plumbing of the seed examples: arguments, ingest-or-reuse, tables, key numbers, charts.

Only the public API is used: actstore.ingest, actstore.open_store, actstore.charts.save_chart.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

import actstore
from actstore.errors import ActstoreError, StoreExistsError

ROOT = Path(__file__).resolve().parent.parent
STORES = ROOT / "stores" / "examples"  # /stores/ is gitignored


class Example:
    """One example script's run: its arguments, store, printed tables and key numbers."""

    def __init__(self, name: str, doc: str, default_n: int) -> None:
        self.t0 = time.perf_counter()
        self.name = name
        parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
        parser.add_argument("--n", type=int, default=default_n, help=f"examples to ingest (default {default_n})")
        parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
        parser.add_argument("--out", type=Path, default=STORES / name,
                            help=f"store directory (default stores/examples/{name}); reused when it holds "
                                 "the same complete run, replaced when it holds another")
        parser.add_argument("--charts", type=Path, default=None, help="write PNG + HTML charts to this directory")
        parser.add_argument("--chart-scale", type=float, default=2.0,
                            help="PNG resolution multiplier (default 2; 1.25 keeps most charts under 200 KB)")
        parser.add_argument("--sweep-n", type=int, default=64,
                            help="examples each patching / ablation sweep runs on: the store's first N (default 64)")
        parser.add_argument("--fresh", action="store_true",
                            help="re-ingest even if --out holds the same run (e.g. after retraining the weights)")
        self.args = parser.parse_args()
        if self.args.n < 1:
            parser.error("--n must be positive")
        if self.args.sweep_n < 1:
            parser.error("--sweep-n must be positive")
        self.keys: dict[str, float | str] = {}
        self.charts: list[Path] = []
        pl.Config.set_tbl_hide_column_data_types(True)
        pl.Config.set_tbl_hide_dataframe_shape(True)
        pl.Config.set_float_precision(3)
        pl.Config.set_tbl_rows(40)
        pl.Config.set_tbl_cols(20)
        pl.Config.set_tbl_width_chars(140)
        pl.Config.set_fmt_str_lengths(40)

    # --- the store ------------------------------------------------------------------------------

    def store(self, task: str, model: str, **ingest_kw: Any) -> Any:
        """The store of `model` on `task` with --n/--seed at --out. actstore.ingest decides: the
        same complete run (same task, parameters, model spec and weights digest) is reused as it
        is, a partial one resumed, a smaller one grown; a store of another run (or a larger one) is replaced."""
        a = self.args
        out: Path = a.out
        t = time.perf_counter()
        stats: dict[str, float] = {}  # ingest fills in how many examples this call ingested
        kw = dict(n=a.n, seed=a.seed, out=out, quiet=True, stats=stats, **ingest_kw)
        try:
            st = actstore.ingest(task, model, overwrite=a.fresh, **kw)
        except StoreExistsError as e:
            if "another run" not in str(e) and "cannot resume" not in str(e) and "is smaller" not in str(e):
                raise
            print(f"store: {_show(out)} holds another run; replacing it")
            st = actstore.ingest(task, model, overwrite=True, **kw)
        if stats["examples"] == 0:
            print(f"store: reusing {_show(out)} ({task} x {model}, {st.n_examples} examples, seed {a.seed})")
        else:
            print(f"store: ingested {st.n_examples} {task} examples through {model} into {_show(out)} "
                  f"in {time.perf_counter() - t:.1f} s")
        return st

    # --- intervention sweeps ------------------------------------------------------------------

    def sweep_n(self, store: Any) -> int:
        """How many examples (the store's first) each intervention sweep runs on: --sweep-n, at most the store's."""
        return min(self.args.sweep_n, store.n_examples)

    @staticmethod
    def sweep(what: str, run: Callable[[], pl.DataFrame]) -> pl.DataFrame:
        """Run one sweep (actstore.interventions: it is stored in the store, and a rerun of the same
        sweep reads it back instead of recomputing) and print its id, size and time."""
        t = time.perf_counter()
        rows = run()
        sid = rows.get_column("sweep")[0] if rows.height else "(empty)"
        print(f"sweep {sid}: {what}: {rows.height} rows in {time.perf_counter() - t:.1f} s")
        return rows

    # --- output ---------------------------------------------------------------------------------

    @staticmethod
    def section(title: str) -> None:
        print(f"\n== {title}")

    @staticmethod
    def table(df: pl.DataFrame, title: str | None = None) -> None:
        if title:
            print(f"-- {title}")
        print(df)

    def key(self, name: str, value: float | str) -> float | str:
        """Record a key number (printed again, parseable, at the end as `  name = value`)."""
        self.keys[name] = value
        return value

    def say(self, text: str) -> None:
        """Print a computed finding."""
        print(f">> {text}")

    def chart(self, name: str, build: Callable[[], Any], png: bool = True, html: bool = True) -> None:
        """Build a chart and write it to --charts as NAME.png / NAME.html (nothing without --charts)."""
        if self.args.charts is None:
            return
        from actstore.charts import save_chart

        self.args.charts.mkdir(parents=True, exist_ok=True)
        chart = build()
        for ext, wanted in ((".png", png), (".html", html)):
            if wanted:
                self.charts.append(save_chart(chart, self.args.charts / f"{name}{ext}", scale=self.args.chart_scale))

    def finish(self) -> None:
        self.section("Key numbers")
        for k, v in self.keys.items():
            print(f"  {k} = {_fmt(v)}")
        if self.charts:
            print(f"\ncharts: {len(self.charts)} files in {_show(self.args.charts)}: "
                  + ", ".join(p.name for p in self.charts))
        print(f"wall time: {time.perf_counter() - self.t0:.1f} s")


def _show(path: Path) -> str:
    """`path` relative to the working directory when it lies below it (shorter, and the same on every machine)."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def _fmt(v: float | str) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def run(main: Callable[[], None]) -> None:
    """Run `main`, turning actstore errors into one line and exit status 1."""
    try:
        main()
    except ActstoreError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def answer_stats() -> dict[str, pl.Expr]:
    """Aggregations of an outputs table, overall or per group: examples, accuracy, mean logit
    difference (correct - counterfactual) and the share of answers where it is positive."""
    return {"examples": pl.len(), "accuracy": pl.col("correct").mean(),
            "mean_logit_diff": pl.col("logit_diff").mean(), "diff_positive": (pl.col("logit_diff") > 0).mean()}


def interval(row: dict[str, Any]) -> str:
    """'95% CI low..high' of a summary row (mean, ci_low, ci_high), or why it has none."""
    if row.get("ci_low") is None or row.get("ci_high") is None:
        return "no interval from fewer than 2 values"
    return f"95% CI {row['ci_low']:.3f}..{row['ci_high']:.3f}"


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"

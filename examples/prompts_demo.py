"""Your own prompts, stored and queried like any task: eight hand-written IOI prompts
(examples/data/ioi_prompts.jsonl: text, answer, counter, corrupted twin, roles, an 'order' label)
run through zoo:lm, then the logit difference per prompt, the heads that write IO over S, where
those heads look from END, and one SQL query over the label column.

    python examples/prompts_demo.py [--file F.jsonl|.csv] [--model zoo:lm] [--out DIR]

The same store from the command line:
    actstore ingest --task prompts --param file=examples/data/ioi_prompts.jsonl --model zoo:lm --n 8 --out S
See docs/prompts.md for the file's columns.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

import actstore
from actstore.query import attention, breakdown, dla

ROOT = Path(__file__).resolve().parent.parent
TOP = 3


def count_prompts(file: Path) -> int:
    """The file's prompts: non-blank lines of a JSONL file, CSV rows after the header."""
    if file.suffix.lower() == ".csv":
        return pl.read_csv(file, infer_schema=False).height
    return sum(1 for line in file.read_text(encoding="utf-8").splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=ROOT / "examples" / "data" / "ioi_prompts.jsonl")
    parser.add_argument("--model", default="zoo:lm")
    parser.add_argument("--out", type=Path, default=ROOT / "stores" / "examples" / "prompts_demo")
    args = parser.parse_args(argv)
    n = count_prompts(args.file)
    store = actstore.ingest("prompts", args.model, n, 0, args.out, task_params={"file": str(args.file)},
                            device="cpu", quiet=True)  # the same run again is reused; another run is refused
    with pl.Config(tbl_rows=50, tbl_cols=12, fmt_str_lengths=70, tbl_hide_dataframe_shape=True):
        print(f"== {n} prompts from {args.file.name} through {args.model}")
        out = store.outputs.join(store.examples.select("example_id", "text", "order", "answer", "counter"),
                                 on="example_id")
        print(out.select("text", "answer", "counter", "logit_diff", "corrupted_logit_diff", "correct"))

        print(f"\n== top {TOP} heads by direct attribution to answer - counter")
        heads = breakdown(dla(store, level="head", target="diff"), group_by=[],
                          keys=["component", "layer", "head"]).filter(pl.col("head").is_not_null())
        top = heads.sort("mean", descending=True).head(TOP)
        print(top.select("component", "mean", "ci_low", "ci_high", "n"))

        print("\n== their attention from END to the roles the file marks")
        att = attention(store, layers=sorted(set(top["layer"].to_list())), query="END", key=["IO", "S1", "S2"],
                        group_by=["k_role"])
        att = att.join(top.select("layer", "head", "component"), on=["layer", "head"])
        print(att.pivot(on="k_role", index="component", values="mean").select("component", "IO", "S1", "S2"))

        print("\n== SQL: logit difference by the file's 'order' label")
        print(store.sql("SELECT e.order, count(*) AS n, round(avg(o.logit_diff), 3) AS mean_logit_diff "
                        "FROM outputs o JOIN examples e USING (example_id) GROUP BY e.order ORDER BY e.order").pl())
    return 0


if __name__ == "__main__":
    sys.exit(main())

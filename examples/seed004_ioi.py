"""Seed 004 through a store: indirect object identification ("When John and Mary went to the shops,
John gave the bag to" -> " Mary") on zoo:lm.

Ingests the zoo language model on the ioi task (answer IO, counterfactual S), then redoes the
seed's analysis from the store: the logit difference IO - S per prompt and on average (overall
and by order ABBA / BABA), the heads with the largest direct logit attribution to that
difference, the attention of those heads from END to IO vs to S1 (and S2), and one SQL query
through store.sql (per-head DLA by order, answered by DuckDB from the derived dla table).

    .venv/bin/python examples/seed004_ioi.py --n 2000 --charts stores/charts/seed004
"""

from __future__ import annotations

import polars as pl
from _common import Example, answer_stats, run

import actstore.charts as ch
from actstore.query import attention, breakdown, dla

TOP = 3

SQL = """
SELECT d.component, e."order", avg(d.value) AS mean_dla, count(*) AS n
FROM dla d JOIN examples e USING (example_id)
WHERE d.head IS NOT NULL
GROUP BY d.component, e."order"
ORDER BY mean_dla DESC
LIMIT 6
"""


def main() -> None:
    ex = Example("seed004_ioi", __doc__, default_n=2000)
    store = ex.store("ioi", "zoo:lm")
    examples = store.examples
    cfg = store.config
    n_layers, n_heads = int(cfg["n_layers"]), int(cfg["n_heads"])
    print(f"model: {n_layers} layers x {n_heads} heads, d_model {cfg['d_model']}; {store.n_examples} examples")

    ex.section("Logit difference IO - S")
    out = store.outputs.join(examples.select("example_id", "order", "io", "s", "text"), on="example_id")
    stats = answer_stats()
    table = pl.concat([out.select(order=pl.lit("all"), **stats),
                       out.group_by("order").agg(**stats).sort("order")], how="vertical_relaxed")
    ex.table(table)
    ex.table(out.select("text", "io", "s", "logit_diff").head(5), "first prompts")
    ex.key("accuracy", float(out.get_column("correct").mean()))
    ex.key("mean_logit_diff", float(out.get_column("logit_diff").mean()))
    for r in table.filter(pl.col("order") != "all").iter_rows(named=True):
        ex.key(f"mean_logit_diff_{r['order']}", float(r["mean_logit_diff"]))

    ex.section("Direct logit attribution to IO - S per head (rows: layer)")
    d = dla(store, level="head", target="diff")
    comp = breakdown(d, group_by=[], keys=["component", "layer", "head"])
    heads = comp.filter(pl.col("head").is_not_null())
    ex.table(heads.pivot(on="head", index="layer", values="mean").sort("layer")
             .rename({str(h): f"H{h}" for h in range(n_heads)}))
    ex.table(comp.filter(pl.col("head").is_null()).select("component", "mean", "ci_low", "ci_high"),
             "embeddings, MLPs and biases")
    top = heads.sort("mean", descending=True).head(TOP)
    neg = heads.sort("mean").row(0, named=True)
    ex.table(top.select("component", "mean", "ci_low", "ci_high"), f"top {TOP} heads")
    ex.say(f"{top['component'][0]} writes the most toward IO over S (mean {top['mean'][0]:.2f}); "
           f"{neg['component']} the most toward S (mean {neg['mean']:.2f})")
    for i, r in enumerate(top.iter_rows(named=True)):
        ex.key(f"top_head_{i + 1}", r["component"])
        ex.key(f"top_head_{i + 1}_dla", float(r["mean"]))
    ex.key("most_negative_head", neg["component"])
    big = comp.filter(pl.col("component").str.contains(r"^(L\d+H\d+|mlp\d+)$")).sort("mean", descending=True)
    ex.say(f"the largest direct contributor overall is {big['component'][0]} (mean {big['mean'][0]:.2f})")
    ex.key("top_component", big["component"][0])
    ex.key("top_component_dla", float(big["mean"][0]))
    ex.key("dla_sum_mean", float(d.group_by("example_id").agg(pl.col("value").sum()).get_column("value").mean()))

    ex.section(f"Attention of the top {TOP} heads from END to IO, S1 and S2, by order")
    pairs = [(int(r["layer"]), int(r["head"])) for r in top.iter_rows(named=True)]
    keep = pl.struct("layer", "head").is_in([{"layer": layer, "head": h} for layer, h in pairs])
    att = attention(store, layers=sorted({layer for layer, _ in pairs}), query="END", key=["IO", "S1", "S2"],
                    group_by=["k_role", "order"]).filter(keep)
    wide = (att.with_columns(head_name=pl.format("L{}H{}", "layer", "head"))
            .pivot(on="k_role", index=["head_name", "order"], values="mean")
            .with_columns(io_minus_s1=pl.col("IO") - pl.col("S1")).sort("head_name", "order"))
    ex.table(wide.select("head_name", "order", "IO", "S1", "S2", "io_minus_s1"))
    both = (attention(store, layers=sorted({layer for layer, _ in pairs}), query="END", key=["IO", "S1", "S2"],
                      group_by=["k_role"]).filter(keep)
            .with_columns(head_name=pl.format("L{}H{}", "layer", "head"))
            .pivot(on="k_role", index="head_name", values="mean"))
    for r in both.sort("head_name").iter_rows(named=True):
        ex.key(f"end_to_io_{r['head_name']}", float(r["IO"]))
        ex.key(f"end_to_s1_{r['head_name']}", float(r["S1"]))
    for r in both.sort("head_name").iter_rows(named=True):
        role = max(("IO", "S1", "S2"), key=lambda k: r[k])
        ex.say(f"{r['head_name']}: END -> IO {r['IO']:.3f}, END -> S1 {r['S1']:.3f}, END -> S2 {r['S2']:.3f}; "
               f"of the three names it reads {role} most")

    ex.section("SQL through store.sql (DuckDB over the derived dla table, target 'diff')")
    print(SQL.strip())
    res = store.sql(SQL, params={"dla": {"level": "head", "target": "diff"}}).pl()
    ex.table(res)
    ex.key("sql_top_component", res["component"][0])
    ex.key("sql_top_order", res["order"][0])
    ex.key("sql_top_mean_dla", float(res["mean_dla"][0]))

    ex.chart("dla_heads", lambda: ch.dla_heatmap(d))
    ex.chart("attention_end", lambda: ch.attention_role_bars(
        attention(store, query="END", key=["IO", "S1", "S2"], group_by=["k_role", "order"]), "END",
        key_roles=["IO", "S1", "S2"], heads=pairs, group_by="order"))
    ex.chart("dla_by_order", lambda: ch.component_bars_by(d, examples, "order", top=12))
    ex.finish()


if __name__ == "__main__":
    run(main)

"""Seed 001 through a store: days/months successor ("Today it is Sunday, tomorrow it is" -> " Monday") on zoo:lm.

Ingests the zoo language model on the days task (the counterfactual token is the day or month
the prompt names, "today"), then redoes the seed's analysis from the store: accuracy and the
mean logit difference correct - today (overall, by kind and offset), the logit lens of that
difference, per-head direct logit attribution with the top heads, and the attention of those
heads from END to the today token (role SUBJECT).

    .venv/bin/python examples/seed001_days.py --n 2000 --charts stores/charts/seed001
"""

from __future__ import annotations

import polars as pl
from _common import Example, answer_stats, head_label, run

import actstore.charts as ch
from actstore.query import attention, breakdown, dla, logit_lens

TOP = 3


def main() -> None:
    ex = Example("seed001_days", __doc__, default_n=2000)
    store = ex.store("days", "zoo:lm")
    examples = store.examples
    cfg = store.config
    n_layers, n_heads = int(cfg["n_layers"]), int(cfg["n_heads"])
    print(f"model: {n_layers} layers x {n_heads} heads, d_model {cfg['d_model']}; {store.n_examples} examples")

    ex.section("Accuracy and logit difference correct - today")
    out = store.outputs.join(examples.select("example_id", "kind", "offset"), on="example_id")
    stats = answer_stats()
    overall = out.select(**stats).with_columns(group=pl.lit("all"))
    by_kind = out.group_by("kind", "offset").agg(**stats).sort("kind", "offset").with_columns(
        group=pl.format("{} offset {}", "kind", "offset")).drop("kind", "offset")
    ex.table(pl.concat([overall, by_kind]).select("group", "examples", "accuracy", "mean_logit_diff", "diff_positive"))
    ex.key("accuracy", float(out.get_column("correct").mean()))
    ex.key("mean_logit_diff", float(out.get_column("logit_diff").mean()))

    ex.section("Logit lens: accumulated residual read on correct - today, by kind")
    lens = logit_lens(store, target="diff")
    ex.table(breakdown(lens, group_by="kind", examples=store, keys=["layer", "stage"])
             .pivot(on="kind", index=["layer", "stage"], values="mean"))
    ex.key("logit_lens_final_mean", float(lens.filter(pl.col("stage") == "resid_post").get_column("value").mean()))

    ex.section("Direct logit attribution (correct - today) by component")
    d = dla(store, level="head", target="diff")
    comp = breakdown(d, group_by=[], keys=["component", "layer", "head"])
    heads = comp.filter(pl.col("head").is_not_null())
    ex.table(heads.pivot(on="head", index="layer", values="mean").sort("layer")
             .rename({str(h): f"H{h}" for h in range(n_heads)}), "mean per head (rows: layer)")
    ex.table(comp.filter(pl.col("head").is_null()).select("component", "mean", "ci_low", "ci_high"),
             "embeddings, MLPs and biases")
    top = heads.sort("mean", descending=True).head(TOP)
    ex.table(top.select("component", "mean", "ci_low", "ci_high"), f"top {TOP} heads")
    for i, r in enumerate(top.iter_rows(named=True)):
        ex.key(f"top_head_{i + 1}", r["component"])
        ex.key(f"top_head_{i + 1}_dla", float(r["mean"]))
    big = comp.filter(pl.col("component").str.contains(r"^(L\d+H\d+|mlp\d+)$")).sort("mean", descending=True)
    r = big.row(0, named=True)
    ex.say(f"the largest direct contributor to correct - today is {r['component']} (mean {r['mean']:.2f}); "
           f"the top head {top['component'][0]} gives {top['mean'][0]:.2f}")
    ex.key("top_component", r["component"])
    ex.key("top_component_dla", float(r["mean"]))
    ex.key("dla_sum_mean", float(d.group_by("example_id").agg(pl.col("value").sum()).get_column("value").mean()))

    ex.section(f"Attention of the top {TOP} heads from END to the today token (SUBJECT), by kind")
    pairs = [(int(r["layer"]), int(r["head"])) for r in top.iter_rows(named=True)]
    att = attention(store, layers=sorted({layer for layer, _ in pairs}), query="END", key="SUBJECT", group_by=["kind"])
    att = att.filter(pl.struct("layer", "head").is_in([{"layer": layer, "head": h} for layer, h in pairs]))
    allk = attention(store, layers=sorted({layer for layer, _ in pairs}), query="END", key="SUBJECT", aggregate="mean")
    allk = allk.filter(pl.struct("layer", "head").is_in([{"layer": layer, "head": h} for layer, h in pairs]))
    ex.table(att.with_columns(head_name=pl.format("L{}H{}", "layer", "head"))
             .pivot(on="kind", index="head_name", values="mean")
             .join(allk.select(head_name=pl.format("L{}H{}", "layer", "head"), all=pl.col("mean"),
                               entropy=pl.col("entropy")), on="head_name"))
    best = allk.sort("mean", descending=True).row(0, named=True)
    first = float(allk.filter((pl.col("layer") == pairs[0][0]) & (pl.col("head") == pairs[0][1]))["mean"][0])
    name = head_label(best["layer"], best["head"])
    if name == top["component"][0]:
        ex.say(f"the top DLA head {name} is also the top heads' strongest reader of the today token: "
               f"{first:.3f} of its attention from END")
    else:
        ex.say(f"of the top DLA heads, {name} attends most from END to the today token (mean {best['mean']:.3f}); "
               f"the top DLA head {top['component'][0]} puts {first:.3f} there")
    ex.key("top_head_end_to_today", first)

    ex.chart("dla_heads", lambda: ch.dla_heatmap(d))
    ex.chart("logit_lens", lambda: ch.logit_lens_lines(lens, examples=examples, group_by="kind"))
    ex.chart("attention_end", lambda: ch.attention_role_bars(
        attention(store, query="END", group_by=["k_role"]), "END", heads=pairs))
    ex.finish()


if __name__ == "__main__":
    run(main)

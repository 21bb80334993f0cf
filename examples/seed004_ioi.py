"""Seed 004 through a store: indirect object identification ("When John and Mary went to the shops,
John gave the bag to" -> " Mary") on zoo:lm.

Ingests the zoo language model on the ioi task (answer IO, counterfactual S), then redoes the
seed's analysis from the store: the logit difference IO - S per prompt and on average (overall
and by order ABBA / BABA), the heads with the largest direct logit attribution to that
difference, the attention of those heads from END to IO vs to S1 (and S2), and one SQL query
through store.sql (per-head DLA by order, answered by DuckDB from the derived dla table); then
name-mover evidence through the store's interventions (actstore.interventions, on the first
--sweep-n examples; each example's corrupted twin is its ABC prompt, three other names): each
head's output z patched at END from the clean run into the twin's (normalised score of the
logit difference IO - S), path patching of each sender head's path to the logits that avoids
other heads (the clean run with that head's output from the twin, every later head's output
frozen to the clean run's, MLPs recomputed), attribution
patching of the same targets and its rank agreement with exact patching, and one SQL query
over the `interventions` view.

    .venv/bin/python examples/seed004_ioi.py --n 2000 --charts stores/charts/seed004
"""

from __future__ import annotations

import polars as pl
from _common import Example, answer_stats, run

import actstore.charts as ch
from actstore.interventions import attribution_patch, patch, path_patch
from actstore.query import attention, breakdown, dla
from actstore.query.interventions import agreement, effects

TOP = 3
METRIC = ("logit_diff",)

SQL = """
SELECT d.component, e."order", avg(d.value) AS mean_dla, count(*) AS n
FROM dla d JOIN examples e USING (example_id)
WHERE d.head IS NOT NULL
GROUP BY d.component, e."order"
ORDER BY mean_dla DESC
LIMIT 6
"""

PATCH_SQL = """
SELECT i.layer, i.head, e."order",
       avg((i.value - i.corrupted) / (i.clean - i.corrupted)) AS score, count(*) AS n
FROM interventions i JOIN examples e USING (example_id)
WHERE i.kind = 'patch' AND i.hook = 'z' AND i.role = 'END' AND i.metric = 'logit_diff'
  AND i.clean <> i.corrupted
GROUP BY ALL
ORDER BY score DESC
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

    _name_movers(ex, store, n_heads)

    ex.chart("dla_heads", lambda: ch.dla_heatmap(d))
    ex.chart("attention_end", lambda: ch.attention_role_bars(
        attention(store, query="END", key=["IO", "S1", "S2"], group_by=["k_role", "order"]), "END",
        key_roles=["IO", "S1", "S2"], heads=pairs, group_by="order"))
    ex.chart("dla_by_order", lambda: ch.component_bars_by(d, examples, "order", top=12))
    ex.finish()


def _name_movers(ex: Example, store, n_heads: int) -> None:
    k = ex.sweep_n(store)
    ex.section(f"Head outputs at END patched into the ABC twin (denoise), first {k} examples")
    z_rows = ex.sweep("patch z of each head at END", lambda: patch(store, "z", "head,pos", pos="END", examples=k,
                                                                   metrics=METRIC))
    base = z_rows.unique("example_id")
    clean, corrupted = float(base["clean"].mean()), float(base["corrupted"].mean())
    ex.say(f"logit difference IO - S: clean {clean:.2f}, ABC twin {corrupted:.2f} (means over {k})")
    ex.key("patch_clean_logit_diff", clean)
    ex.key("patch_corrupted_logit_diff", corrupted)
    z = effects(z_rows, value="score").with_columns(head_name=pl.format("L{}H{}", "layer", "head"))
    ex.table(z.pivot(on="head", index="layer", values="mean").sort("layer")
             .rename({str(h): f"H{h}" for h in range(n_heads)}), "mean normalised score (rows: layer)")
    zt = z.sort("mean", descending=True)
    ex.table(zt.head(TOP).select("head_name", "mean", "ci_low", "ci_high", "n"), f"top {TOP}")
    ex.key("patch_z_end_top_head", zt["head_name"][0])
    ex.key("patch_z_end_top_score", float(zt["mean"][0]))

    ex.section(f"Path patching: each sender head's path to the logits that avoids other heads (noise), "
               f"first {k} examples")
    p_rows = ex.sweep("path patch every sender -> logits", lambda: path_patch(store, "logits", examples=k,
                                                                             metrics=METRIC))
    paths = (effects(p_rows, value="effect").select("layer", "head", effect="mean", effect_low="ci_low",
                                                    effect_high="ci_high")
             .join(effects(p_rows, value="score").select("layer", "head", score="mean"), on=["layer", "head"])
             .with_columns(head_name=pl.format("L{}H{}", "layer", "head")).sort("effect"))
    ex.table(paths.select("head_name", "effect", "effect_low", "effect_high", "score"),
             "change of the clean logit difference when only the head's path to the logits sees the twin")
    ex.chart("path_patching", lambda: ch.effect_bars(p_rows, value="effect"))
    pt = paths.row(0, named=True)
    ex.key("path_top_head", pt["head_name"])
    ex.key("path_top_effect", float(pt["effect"]))

    # name-mover evidence: the heads whose END output restores IO over S, their path to the logits, what
    # they read from END and whether they write IO up or S down (per-head DLA on each name's logit)
    movers = (zt.head(TOP).select("layer", "head", "head_name", z_score="mean")
              .join(paths.select("head_name", "effect"), on="head_name"))
    layers = sorted(set(movers["layer"].to_list()))
    att = (attention(store, layers=layers, query="END", key=["IO", "S1", "S2"], group_by=["k_role"])
           .with_columns(head_name=pl.format("L{}H{}", "layer", "head"))
           .pivot(on="k_role", index="head_name", values="mean"))
    io_dla = (breakdown(dla(store, level="head", target="correct"), group_by=[], keys=["component"])
              .select(head_name="component", dla_io="mean"))
    diff_dla = breakdown(dla(store, level="head", target="diff"), group_by=[], keys=["component"])
    movers = (movers.join(att, on="head_name", how="left").join(io_dla, on="head_name", how="left")
              .join(diff_dla.select(head_name="component", dla_diff="mean"), on="head_name", how="left")
              .with_columns(dla_s=pl.col("dla_io") - pl.col("dla_diff")).sort("z_score", descending=True))
    ex.table(movers.select("head_name", "z_score", "effect", "dla_io", "dla_s", "IO", "S1", "S2"),
             "top heads by z patching at END: path effect; DLA on the IO and S logits and attention from END "
             "(over all examples)")
    for r in movers.iter_rows(named=True):
        reads = max(("IO", "S1", "S2"), key=lambda c: r[c])
        if reads == "IO" and r["dla_io"] > abs(r["dla_s"]):
            role = "it copies IO to the logits: a name mover"
        elif reads != "IO" and -r["dla_s"] > abs(r["dla_io"]):
            role = f"it reads the repeated name ({reads}) and pushes S down: S suppression, not IO copying"
        elif r["layer"] > 0 and r["dla_io"] > abs(r["dla_s"]):
            role = (f"it writes IO up while attending {reads}: what it moves is what earlier layers wrote at "
                    f"{reads}, not that token")
        else:
            role = f"it reads {reads} most"
        ex.say(f"{r['head_name']}: z at END restores {r['z_score']:.3f}, its path to the logits {r['effect']:+.2f}; "
               f"END attends IO {r['IO']:.3f}, S1 {r['S1']:.3f}, S2 {r['S2']:.3f}; DLA IO {r['dla_io']:+.2f}, "
               f"S {r['dla_s']:+.2f}: {role}")

    ex.section("Attribution patching of the same targets, against exact patching")
    a_rows = ex.sweep("attribution patch z of each head at END", lambda: attribution_patch(
        store, "z", "head,pos", pos="END", examples=k, metrics=METRIC))
    # agreement keys targets by (layer, head, pos); END sits at several indices across templates: compare per head
    per_head = [t.with_columns(pos=pl.lit(None, pl.Int64)) for t in (a_rows, z_rows)]
    agree = agreement(*per_head)
    ex.chart("atp_vs_exact", lambda: ch.atp_scatter(*per_head))
    ex.say(f"AtP ranks the {agree['n_targets']} heads like exact patching: Spearman {agree['spearman']:.3f}, "
           f"Pearson {agree['pearson']:.3f} ({agree['metric']})")
    ex.key("atp_spearman", float(agree["spearman"]))

    ex.section("SQL over the stored sweeps (the `interventions` view joined with `examples`)")
    print(PATCH_SQL.strip())
    res = store.sql(PATCH_SQL).pl()
    ex.table(res)
    ex.key("sql_patch_top_head", f"L{res['layer'][0]}H{res['head'][0]}")
    ex.key("sql_patch_top_order", res["order"][0])
    ex.key("sql_patch_top_score", float(res["score"][0]))


if __name__ == "__main__":
    run(main)

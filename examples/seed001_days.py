"""Seed 001 through a store: days/months successor ("Today it is Sunday, tomorrow it is" -> " Monday") on zoo:lm.

Ingests the zoo language model on the days task (the counterfactual token is the day or month
the prompt names, "today"), then redoes the seed's analysis from the store: accuracy and the
mean logit difference correct - today (overall, by kind and offset), the logit lens of that
difference, per-head direct logit attribution with the top heads, and the attention of those
heads from END to the today token (role SUBJECT); then the seed's activation patching through
the store (actstore.interventions, on the first --sweep-n examples): each example's corrupted
twin names the previous item ("Today it is Tuesday, tomorrow it is": the answer " Monday" no
longer follows), the twin is run with one clean activation patched in, and the normalised score
(patched - corrupted) / (clean - corrupted) of the logit difference says how much of the clean
behaviour that activation restores: resid_pre, attn_out and mlp_out by layer x position (the
positions grouped as before / at the SUBJECT, between it and END, and END), and per head its
output z, value v and attention pattern.

    .venv/bin/python examples/seed001_days.py --n 2000 --charts stores/charts/seed001
"""

from __future__ import annotations

import polars as pl
from _common import Example, answer_stats, head_label, interval, run

import actstore.charts as ch
from actstore.interventions import patch
from actstore.query import attention, breakdown, dla, logit_lens
from actstore.query.interventions import effects, normalised

TOP = 3
METRIC = ("logit_diff",)
PLACES = ["before", "SUBJECT", "between", "END"]  # position classes of the layer x position sweeps


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

    _patching(ex, store, n_layers, n_heads)

    ex.chart("dla_heads", lambda: ch.dla_heatmap(d))
    ex.chart("logit_lens", lambda: ch.logit_lens_lines(lens, examples=examples, group_by="kind"))
    ex.chart("attention_end", lambda: ch.attention_role_bars(
        attention(store, query="END", group_by=["k_role"]), "END", heads=pairs))
    ex.finish()


def _patching(ex: Example, store, n_layers: int, n_heads: int) -> None:
    k = ex.sweep_n(store)
    ex.section(f"Activation patching on the first {k} examples (denoise: the corrupted twin with one clean "
               "activation patched in)")
    twins = store.examples.filter(pl.col("example_id") < 3).select("text", "twin_subject", "answer", "subject")
    ex.table(twins, "clean prompts, the subject their twin names instead; the answer and counterfactual stay")
    layer_rows = {hook: ex.sweep(f"patch {hook} by layer x position", lambda hook=hook: patch(
        store, hook, "layer,pos", examples=k, metrics=METRIC)) for hook in ("resid_pre", "attn_out", "mlp_out")}
    base = layer_rows["resid_pre"].unique(["example_id", "answer_idx"])
    clean, corrupted = float(base["clean"].mean()), float(base["corrupted"].mean())
    ex.say(f"logit difference correct - today: clean {clean:.2f}, corrupted twin {corrupted:.2f} (means over {k})")
    ex.key("patch_clean_logit_diff", clean)
    ex.key("patch_corrupted_logit_diff", corrupted)

    # one position class per row, from the example's SUBJECT and END positions (templates differ in length)
    subj, end = store.examples.select("example_id", "subject_pos", "end_pos"), pl.col("end_pos")
    place = (pl.when(pl.col("pos") < pl.col("subject_pos")).then(pl.lit("before"))
             .when(pl.col("pos") == pl.col("subject_pos")).then(pl.lit("SUBJECT"))
             .when(pl.col("pos") < end).then(pl.lit("between")).otherwise(pl.lit("END")))
    scores = pl.concat([breakdown(normalised(r).join(subj, on="example_id").with_columns(place=place), group_by=[],
                                  value="score", keys=["hook", "layer", "place"]) for r in layer_rows.values()])
    ex.table(scores.pivot(on="place", index=["hook", "layer"], values="mean").select("hook", "layer", *PLACES),
             "mean normalised score by layer and position (1: the clean logit difference restored)")
    ex.chart("patch_resid_pre", lambda: ch.position_heatmap(layer_rows["resid_pre"], slots="role"))
    at = {(r["hook"], r["layer"], r["place"]): r["mean"] for r in scores.iter_rows(named=True)}
    ex.key("patch_resid_pre_L0_subject", float(at["resid_pre", 0, "SUBJECT"]))
    moved = next((layer for layer in range(n_layers) if at["resid_pre", layer, "END"] > 0.5), None)
    if moved is not None:
        ex.say(f"resid_pre at END first restores more than half at layer {moved}: the today token's identity "
               f"has reached END before block {moved}")
    ex.key("patch_resid_pre_end_first_layer", "none" if moved is None else str(moved))
    for hook in ("attn_out", "mlp_out"):
        r = scores.filter(pl.col("hook") == hook).sort("mean", descending=True).row(0, named=True)
        ex.say(f"{hook}: layer {r['layer']} at {r['place']} restores the most ({r['mean']:.3f}, {interval(r)})")
        ex.key(f"patch_{hook}_top", f"L{r['layer']} {r['place']}")
        ex.key(f"patch_{hook}_top_score", float(r["mean"]))

    head_rows = {hook: ex.sweep(f"patch {hook} of each head (every position)", lambda hook=hook: patch(
        store, hook, "head", examples=k, metrics=METRIC)) for hook in ("z", "v", "pattern")}
    heads = {hook: effects(rows, value="score") for hook, rows in head_rows.items()}
    ex.chart("patch_z_heads", lambda: ch.head_heatmap(head_rows["z"]))
    per_head = pl.concat([h.select("hook", "layer", "head", "mean") for h in heads.values()])
    ex.table(per_head.with_columns(head_name=pl.format("L{}H{}", "layer", "head"))
             .pivot(on="hook", index="head_name", values="mean").sort("z", descending=True),
             "mean normalised score per head: output z, value v, pattern")
    top = heads["z"].sort("mean", descending=True).row(0, named=True)
    name = head_label(top["layer"], top["head"])
    of_top = {hook: float(h.filter((pl.col("layer") == top["layer"]) & (pl.col("head") == top["head"]))["mean"][0])
              for hook, h in heads.items()}
    ex.say(f"{name}'s output restores the most ({of_top['z']:.3f}); its values alone {of_top['v']:.3f}, its "
           f"attention pattern alone {of_top['pattern']:.3f}: "
           + ("it moves what the token is, not where it looks" if of_top["v"] > of_top["pattern"]
              else "where it looks matters more than what it reads"))
    ex.key("patch_z_top_head", name)
    ex.key("patch_z_top_score", of_top["z"])
    ex.key("patch_v_top_head_score", of_top["v"])
    ex.key("patch_pattern_top_head_score", of_top["pattern"])


if __name__ == "__main__":
    run(main)

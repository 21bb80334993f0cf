"""Seed 002 through a store: the balanced-brackets classifier (bidirectional, read at position 0) on zoo:brackets.

Ingests the zoo model on the brackets task, then redoes the seed's analysis from the store:
accuracy by failure type; the "unbalanced direction" (logit of class unbalanced minus class
balanced) read by every component, per head, per MLP and per neuron, split by failure type;
which head carries information into position 0 from which positions (attention from position
0 by head, grouped by failure); and which MLP neurons' projections track the open-bracket
proportion (Pearson r), directly at position 0 and through the head that carries the most. Then
the unbalanced direction before the final LayerNorm (a linear fit of ln_final at position 0,
saved in the store as direction 'unbalanced'), the cosines of v_L / v_R (the images of '(' and
')' under head 0.0's OV) with the neurons' input directions, and each neuron's projection at
position 0 onto the saved direction, read by name.
Findings are computed from the queries, not assumed from the seed's model.

    .venv/bin/python examples/seed002_brackets.py --n 2000 --charts stores/charts/seed002
"""

from __future__ import annotations

import numpy as np
import polars as pl
from _common import Example, head_label, run

import actstore.charts as ch
from actstore.query import attention, breakdown, dla, neuron_correlation, neuron_frames, neurons
from actstore.query.cosines import cosine_table
from actstore.query.ln_fit import fit_layernorm, unembed_direction
from actstore.store.directions import save_direction


def main() -> None:
    ex = Example("seed002_brackets", __doc__, default_n=2000)
    store = ex.store("brackets", "zoo:brackets")
    examples = store.examples
    cfg = store.config
    n_layers, n_heads, n = int(cfg["n_layers"]), int(cfg["n_heads"]), store.n_examples
    labels = examples.select("example_id", "balanced", "failure", "open_proportion", "starts_open")
    outputs = store.outputs.join(labels, on="example_id")
    # class token ids, from the stored answers: the correct token of unbalanced / balanced examples
    unb_tok = int(outputs.filter(~pl.col("balanced")).get_column("correct_token")[0])
    bal_tok = int(outputs.filter(pl.col("balanced")).get_column("correct_token")[0])
    print(f"model: {n_layers} layers x {n_heads} heads, d_mlp {cfg.get('d_mlp')}; {n} examples; "
          f"class tokens: unbalanced={unb_tok}, balanced={bal_tok}")

    ex.section("Accuracy by failure type")
    acc = (outputs.group_by("failure").agg(examples=pl.len(), accuracy=pl.col("correct").mean(),
                                            mean_logit_diff=pl.col("logit_diff").mean())
           .sort("failure"))
    ex.table(acc)
    ex.key("accuracy", float(outputs.get_column("correct").mean()))
    for r in acc.iter_rows(named=True):
        ex.key(f"accuracy_{r['failure']}", float(r["accuracy"]))

    # 'diff' = correct minus the other class; the unbalanced direction is that, sign-flipped on balanced examples
    def unbalanced_dir(t: pl.DataFrame) -> pl.DataFrame:
        t = t.join(labels.select("example_id", "balanced", "failure"), on="example_id", how="left")
        return t.with_columns(value=pl.when(pl.col("balanced")).then(-pl.col("value")).otherwise(pl.col("value")))

    ex.section("Direct attribution to the unbalanced direction (logit unbalanced - balanced), by failure type")
    diff = dla(store, level="head", target="diff")
    comp = unbalanced_dir(diff)
    by_fail = breakdown(comp, group_by="failure", keys=["component"])
    ex.table(by_fail.pivot(on="failure", index="component", values="mean"))
    total = comp.group_by("example_id").agg(pl.col("value").sum(), pl.col("balanced").first())
    ex.key("unbalanced_dir_sum_mean_unbalanced", float(total.filter(~pl.col("balanced")).get_column("value").mean()))
    ex.key("unbalanced_dir_sum_mean_balanced", float(total.filter(pl.col("balanced")).get_column("value").mean()))
    # separation: mean on unbalanced examples minus mean on balanced ones, per component
    sep = (comp.group_by("component", "layer", "head").agg(
        sep=pl.col("value").filter(~pl.col("balanced")).mean() - pl.col("value").filter(pl.col("balanced")).mean())
        .sort("sep", descending=True))
    top = sep.row(0, named=True)
    ex.say(f"{top['component']} separates unbalanced from balanced strings most in the unbalanced direction "
           f"(mean difference {top['sep']:.2f})")
    ex.key("top_component", top["component"])
    ex.key("top_component_separation", float(top["sep"]))
    heads = sep.filter(pl.col("head").is_not_null())
    carrier = heads.row(0, named=True)
    ex.say(f"among attention heads, {carrier['component']} separates most (mean difference {carrier['sep']:.2f})")
    ex.key("top_head", carrier["component"])
    ex.key("top_head_separation", float(carrier["sep"]))
    for failure, part in by_fail.filter(pl.col("failure") != "none").group_by("failure", maintain_order=True):
        r = part.sort("mean", descending=True).row(0, named=True)
        ex.say(f"failure {failure[0]}: largest push toward 'unbalanced' from {r['component']} (mean {r['mean']:.2f})")

    ex.section("Attention from position 0 (the classifier position) by head and failure type")
    roles = attention(store, query=0, group_by=["k_role", "failure"])
    ex.table(roles.pivot(on="k_role", index=["layer", "head", "failure"], values="mean")
             .sort("layer", "head", "failure"),
             "mean attention mass on all keys of each role")
    pos = attention(store, query=0, group_by=["k_pos"]).with_columns(expected=pl.col("mean") * pl.col("n") / n)
    top_pos = (pos.sort("expected", descending=True).group_by("layer", "head", maintain_order=True).head(3)
               .sort("layer", "head", "expected", descending=[False, False, True]))
    ex.table(top_pos.select("layer", "head", "k_pos", "expected", "mean", "n"),
             "the 3 key positions each head reads most from position 0 (expected mass per example)")
    spread = (roles.filter(pl.col("k_role") == "open").group_by("layer", "head")
              .agg(open_range=pl.col("mean").max() - pl.col("mean").min()).sort("open_range", descending=True))
    r = spread.row(0, named=True)
    ex.say(f"{head_label(r['layer'], r['head'])}'s attention to '(' tokens from position 0 varies most with the "
           f"failure type (range {r['open_range']:.3f})")
    ex.key("failure_sensitive_head", head_label(r["layer"], r["head"]))
    cl, chd = int(carrier["layer"]), int(carrier["head"])

    ex.section("MLP neurons: direct attribution to the unbalanced direction (top 8 by mean |value|)")
    nd = unbalanced_dir(dla(store, level="neuron", target="diff")).filter(pl.col("neuron").is_not_null())
    nsum = breakdown(nd, group_by="failure", keys=["component"]).pivot(on="failure", index="component", values="mean")
    size = nd.group_by("component").agg(size=pl.col("value").abs().mean())
    ex.table(nsum.join(size, on="component").sort("size", descending=True).head(8))

    ex.section("Neurons whose projection onto the unbalanced direction tracks open_proportion (Pearson r)")
    w_u = store.param("unembed.W_U").astype(np.float64)
    direction = w_u[:, unb_tok] - w_u[:, bal_tok]
    rows = []
    for layer in range(n_layers):
        r_ = neuron_correlation(store, layer, "open_proportion", value="projection", direction=direction,
                                final_ln=True, pos=0)
        rows.append(r_.with_columns(read=pl.lit("direct at pos 0")))
    # neurons before the carrier head, read through it: each neuron's output at every position, pulled
    # back through the head's OV and weighted by the head's attention from position 0, summed per example
    y = examples.select("example_id", "open_proportion")
    for layer in range(cl):
        per_ex = []
        for part in neuron_frames(store, layer, direction=direction, final_ln=True, through_head=(cl, chd),
                                  pos=["start", "open", "close", "end"], attention_weighted=True):
            per_ex.append(part.group_by("example_id", "neuron").agg(pl.col("projection").sum()))
        t = pl.concat(per_ex).join(y, on="example_id")
        r_ = (t.group_by("neuron").agg(r=pl.corr("projection", "open_proportion"), n=pl.len().cast(pl.Int64))
              .with_columns(layer=pl.lit(layer, dtype=pl.Int64)).select("layer", "neuron", "r", "n"))
        rows.append(r_.with_columns(read=pl.lit(f"through {carrier['component']}, all positions")))
    corr = pl.concat(rows).filter(pl.col("r").is_finite())
    best = (corr.with_columns(abs_r=pl.col("r").abs()).sort("abs_r", descending=True)
            .group_by("read", "layer", maintain_order=True).head(3).sort("read", "layer", "abs_r",
                                                                           descending=[False, False, True]))
    ex.table(best.select("read", "layer", "neuron", "r", "n"))
    b = corr.with_columns(abs_r=pl.col("r").abs()).sort("abs_r", descending=True).row(0, named=True)
    ex.say(f"neuron L{b['layer']}N{b['neuron']} ({b['read']}) tracks open_proportion most: r = {b['r']:.3f} "
           f"over {b['n']} rows")
    ex.key("top_neuron", f"L{b['layer']}N{b['neuron']}")
    ex.key("top_neuron_r", float(b["r"]))
    ex.key("top_neuron_read", b["read"])

    _unbalanced_fit(ex, store, labels, unb_tok, bal_tok)

    # the chart shows the logit difference correct - other class (= the unbalanced direction except on
    # balanced strings, failure 'none', where it is its negative)
    ex.chart("dla_diff_by_failure", lambda: ch.component_bars_by(diff, examples, "failure", top=10))
    ex.chart("attention_from_0", lambda: ch.attention_role_bars(roles, "start", group_by="failure"))
    top_neurons = best.filter((pl.col("layer") == b["layer"]) & (pl.col("read") == b["read"]))
    if b["read"].startswith("direct"):  # the scatter shows per-row projections: only for the direct read
        ex.chart("neurons_vs_open_proportion", lambda: ch.neuron_scatter(
            neurons(store, int(b["layer"]), direction=direction, final_ln=True, pos=0), examples,
            x="open_proportion", color="failure", which=top_neurons.get_column("neuron").to_list(),
            direction="the unbalanced direction"))
    ex.finish()


def _unbalanced_fit(ex: Example, store, labels: pl.DataFrame, unb_tok: int, bal_tok: int) -> None:
    """The seed's unbalanced direction before the final LayerNorm (a linear fit of it, saved by name), the
    cosines of v_L / v_R with the neurons' input directions, and neuron projections onto the saved direction."""
    n_layers, d_model = store.arch.n_layers, store.arch.d_model
    ex.section("The unbalanced direction before the final LayerNorm: a linear fit of ln_final at position 0, "
               "saved as direction 'unbalanced' (= actstore direction fit-ln --token 0 --minus 1 --pos 0)")
    fit = fit_layernorm(store, "ln_final", pos=0)
    vector = fit.pull_back(unembed_direction(store, unb_tok, bal_tok))
    saved = save_direction(store.path, "unbalanced", vector, overwrite=True,
                           info={"kind": "fit-ln", "token": unb_tok, "minus": bal_tok, **fit.info(0)})
    ex.say(f"ln_final fitted over {fit.n} rows (position 0): r2 = {fit.r2:.4f}; the direction 'unbalanced' "
           f"(norm {saved.norm:.2f}) is coef^T (W_U[:, {unb_tok}] - W_U[:, {bal_tok}])")
    ex.key("ln_final_fit_r2", float(fit.r2))
    ex.key("unbalanced_fit_norm", float(saved.norm))

    ex.section("Cosines of v_L, v_R (the images of '(' and ')' under head 0.0's OV) with the W_in columns")
    toks = store.tokens.filter(pl.col("role").is_in(["open", "close"])).group_by("role").agg(pl.col("token_id").first())
    tok = dict(toks.iter_rows())
    v_lr = {"v_L": tok["open"], "v_R": tok["close"]}
    cos = pl.concat([cosine_table(store, "W_E@OV:0.0", f"W_in:{layer}", left_ids=list(v_lr.values()))
                     .with_columns(layer=pl.lit(layer, dtype=pl.Int64)) for layer in range(n_layers)])
    cos = cos.with_columns(v=pl.col("left_id").replace_strict({t: k for k, t in v_lr.items()}, return_dtype=pl.Utf8))
    wide = cos.pivot(on="v", index=["layer", "right_id"], values="cosine").rename({"right_id": "neuron"})
    ex.table(wide.sort(pl.col("v_R").abs(), descending=True).head(8),
             "the 8 neurons whose input direction is most aligned with v_R (either sign)")
    avg = cos.group_by("v").agg(mean_sq=(pl.col("cosine") ** 2).mean()).sort("v")
    ex.table(avg.with_columns(random_baseline=pl.lit(1.0 / d_model)),
             "mean squared cosine over every neuron, against a random direction's 1 / d_model")
    lr = cosine_table(store, "W_E@OV:0.0", "W_E@OV:0.0", left_ids=[v_lr["v_L"]], right_ids=[v_lr["v_R"]])
    c_lr = float(lr.get_column("cosine")[0])
    ex.say(f"cos(v_L, v_R) = {c_lr:.3f}: head 0.0 writes '(' and ')' in nearly opposite directions")
    ex.key("cos_vL_vR", c_lr)
    for r in avg.iter_rows(named=True):
        ex.key(f"mean_sq_cos_{r['v']}_W_in", float(r["mean_sq"]))

    ex.section("Neuron projections at position 0 onto the saved direction, by name (direction='name:unbalanced')")
    proj = neurons(store, layers=list(range(n_layers)), direction="name:unbalanced", pos=0).join(
        labels.select("example_id", "balanced"), on="example_id")
    sep = (proj.group_by("layer", "neuron").agg(
        unbalanced=pl.col("projection").filter(~pl.col("balanced")).mean(),
        balanced=pl.col("projection").filter(pl.col("balanced")).mean())
        .with_columns(sep=pl.col("unbalanced") - pl.col("balanced")).sort("sep", descending=True))
    ex.table(sep.head(8), "the 8 neurons whose projection separates unbalanced from balanced strings most")
    b = sep.row(0, named=True)
    ex.say(f"L{b['layer']}N{b['neuron']} pushes along the saved unbalanced direction most: mean projection "
           f"{b['balanced']:.2f} on balanced, {b['unbalanced']:.2f} on unbalanced strings")
    ex.key("unbalanced_fit_top_neuron", f"L{b['layer']}N{b['neuron']}")
    ex.key("unbalanced_fit_top_neuron_sep", float(b["sep"]))


if __name__ == "__main__":
    run(main)

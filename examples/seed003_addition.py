"""Seed 003 through a store: 4-digit addition `a0a1a2a3+b0b1b2b3=c0c1c2c3` on zoo:addition.

Ingests the zoo model on the addition task (digits most significant first; answer i is sum
digit c_i, read one position before it; carry_i says digit i receives a carry), then redoes the
seed's analysis from the store: accuracy per digit and carry, per-head direct logit attribution
by digit, the carry vs no-carry split of that attribution per digit, layer-1 attention from each
answer's query position to the a/b digits split by carry, the path (virtual head) DLA, and the
seed's mean ablations through the store (actstore.interventions, on the first --sweep-n
examples): each head's output z, and its q, k and v, replaced by their mean over the store's
examples at each position, with the increase of the loss of each sum digit, overall and split
by whether that digit receives a carry. Then the DLA toward every digit (target=list(range(10)),
one row per token) and its Fourier view over the digits (query/fourier.py), and a test_prompt-style
top-k table from the SQL view topk (the most likely tokens at each answer, and how often the top
one is the correct digit).

    .venv/bin/python examples/seed003_addition.py --n 4000 --charts stores/charts/seed003
"""

from __future__ import annotations

import polars as pl
from _common import Example, run

import actstore.charts as ch
from actstore.interventions import ablate
from actstore.query import attention, breakdown, dla
from actstore.query.fourier import fourier_table
from actstore.query.interventions import effects


def main() -> None:
    ex = Example("seed003_addition", __doc__, default_n=4000)
    store = ex.store("addition", "zoo:addition")
    examples = store.examples
    cfg = store.config
    n_layers, n_heads, n_digits = int(cfg["n_layers"]), int(cfg["n_heads"]), store.n_answers
    carry_cols = sorted(c for c in examples.columns if c.startswith("carry_"))
    carry_of = {int(c.split("_")[1]): c for c in carry_cols}  # answer_idx -> its carry label
    print(f"model: {n_layers} layers x {n_heads} heads; {store.n_examples} examples, {n_digits} sum digits; "
          f"carry labels: {', '.join(carry_cols)}")

    # one 'carry' column per answer row: does this digit receive a carry? (null: the last digit never does)
    def with_carry(t: pl.DataFrame) -> pl.DataFrame:
        t = t.join(examples.select("example_id", *carry_cols), on="example_id", how="left")
        carry = pl.lit(None, dtype=pl.Boolean)
        for i, col in carry_of.items():
            carry = pl.when(pl.col("answer_idx") == i).then(pl.col(col)).otherwise(carry)
        return t.with_columns(carry=carry).drop(carry_cols)

    ex.section("Accuracy per digit, by carry into that digit")
    out = with_carry(store.outputs)
    ex.table(out.group_by("answer_idx", "carry").agg(answers=pl.len(), accuracy=pl.col("correct").mean(),
                                                     mean_loss=pl.col("loss").mean())
             .sort("answer_idx", "carry", nulls_last=True))
    ex.key("accuracy", float(out.get_column("correct").mean()))

    ex.section("Direct logit attribution per head (correct digit), mean by digit")
    d = dla(store, level="head")
    heads = d.filter(pl.col("head").is_not_null())
    by_digit = breakdown(heads, group_by=[], keys=["answer_idx", "component"])
    ex.table(by_digit.with_columns(digit=pl.format("c{}", "answer_idx"))
             .pivot(on="digit", index="component", values="mean"))
    top = by_digit.sort("mean", descending=True).group_by("answer_idx", maintain_order=True).first().sort("answer_idx")
    for r in top.iter_rows(named=True):
        ex.say(f"{r['component']} carries the most direct attribution for digit c{r['answer_idx']} "
               f"(mean {r['mean']:.2f})")
        ex.key(f"top_head_c{r['answer_idx']}", r["component"])
        ex.key(f"top_head_c{r['answer_idx']}_dla", float(r["mean"]))
    per_answer = d.group_by("example_id", "answer_idx").agg(pl.col("value").sum())
    ex.key("dla_sum_mean", float(per_answer.get_column("value").mean()))

    ex.section("breakdown(dla, group_by='carry_i'): carry vs no carry, per digit and head")
    rows = []
    for i, col in carry_of.items():
        b = breakdown(heads.filter(pl.col("answer_idx") == i), group_by=col, examples=store)
        rows.append(b.rename({col: "carry"}).with_columns(digit=pl.lit(f"c{i}")))
    split = pl.concat(rows).select("digit", "component", "carry", "mean", "n")
    wide = split.pivot(on="carry", index=["digit", "component"], values="mean").rename(
        {"true": "carry", "false": "no_carry"}).with_columns(delta=pl.col("carry") - pl.col("no_carry"))
    ex.table(wide)
    for digit, part in wide.group_by("digit", maintain_order=True):
        r = part.sort(pl.col("delta").abs(), descending=True).row(0, named=True)
        ex.say(f"digit {digit[0]}: a carry changes {r['component']}'s DLA most "
               f"({r['no_carry']:.2f} -> {r['carry']:.2f}, delta {r['delta']:+.2f})")
        ex.key(f"carry_delta_head_{digit[0]}", r["component"])
        ex.key(f"carry_delta_{digit[0]}", float(r["delta"]))

    ex.section("Layer 1 attention from each answer's query position to the a/b digits, by carry")
    query_role = _query_roles(store)  # answer_idx -> role of the position its logit is read at
    digit_roles = [f"{x}{j}" for x in "ab" for j in range(n_digits)]
    parts = []
    for i, col in carry_of.items():
        a = attention(store, layers=n_layers - 1, query=query_role[i], key=digit_roles, group_by=["k_role", col])
        parts.append(a.rename({col: "carry"}).with_columns(digit=pl.lit(f"c{i}")))
    att = pl.concat(parts)
    # the digit pair that makes c_i (same place) and the next lower pair (where c_i's carry comes from)
    att = att.with_columns(place=pl.col("k_role").str.slice(1).cast(pl.Int64))
    att = att.with_columns(
        which=pl.when(pl.col("place") == pl.col("digit").str.slice(1).cast(pl.Int64)).then(pl.lit("same"))
        .when(pl.col("place") == pl.col("digit").str.slice(1).cast(pl.Int64) + 1).then(pl.lit("next_lower"))
        .otherwise(pl.lit("other")))
    mass = (att.group_by("digit", "layer", "head", "carry", "which").agg(pl.col("mean").sum())
            .pivot(on="which", index=["digit", "layer", "head", "carry"], values="mean")
            .sort("digit", "head", "carry"))
    ex.table(mass.select("digit", "head", "carry", "same", "next_lower", "other"),
             f"L{n_layers - 1} attention mass on the a/b digits of the same place / the next lower place / others")
    # which head's attention to the next lower pair moves most with a carry (over the digits that have one)
    nl = (mass.group_by("layer", "head", "carry").agg(pl.col("next_lower").mean())
          .pivot(on="carry", index=["layer", "head"], values="next_lower")
          .with_columns(delta=pl.col("true") - pl.col("false")).sort(pl.col("delta").abs(), descending=True))
    r = nl.row(0, named=True)
    ex.say(f"with a carry, L{r['layer']}H{r['head']}'s attention to the next lower digit pair changes most: "
           f"{r['false']:.3f} -> {r['true']:.3f} (mean over digits c0..c{n_digits - 2})")
    ex.key("carry_attention_head", f"L{r['layer']}H{r['head']}")
    ex.key("carry_attention_delta", float(r["delta"]))

    ex.section("Path DLA (virtual heads): top paths per digit")
    paths = dla(store, level="path")
    pm = breakdown(paths, group_by=[], keys=["answer_idx", "component"])
    top_paths = (pm.with_columns(size=pl.col("mean").abs()).sort("size", descending=True)
                 .group_by("answer_idx", maintain_order=True).head(4)
                 .sort("answer_idx", "size", descending=[False, True]))
    ex.table(top_paths.select("answer_idx", "component", "mean", "ci_low", "ci_high"))
    comp = (pm.filter(pl.col("component").str.contains(">")).with_columns(
        via=pl.col("component").str.split(">").list.first())
        .group_by("via").agg(pl.col("mean").sum() / n_digits).sort("mean", descending=True))
    ex.table(comp.rename({"mean": "mean_dla_through_L1"}), "what layer-1 heads read, summed over L1 heads")
    ex.key("top_path_c0", top_paths.filter(pl.col("answer_idx") == 0).get_column("component")[0])
    path_sum = paths.group_by("example_id", "answer_idx").agg(pl.col("value").sum())
    ex.key("path_sum_mean", float(path_sum.get_column("value").mean()))

    _ablations(ex, store, carry_of)
    _every_digit(ex, store)
    _topk(ex, store)

    ex.chart("dla_heads", lambda: ch.dla_heatmap(d))
    ex.chart("dla_carry_split", lambda: ch.component_bars_by(d, examples, carry_of, top=8,
                                                             label_title="carry into digit"))
    ex.chart("attention_L1_from_eq", lambda: ch.attention_role_bars(
        attention(store, layers=n_layers - 1, query=query_role[0], key=digit_roles, group_by=["k_role", carry_of[0]]),
        query_role[0], group_by=carry_of[0]))
    ex.chart("path_dla", lambda: ch.component_bars(paths, top=12))
    ex.finish()


def _ablations(ex: Example, store, carry_of: dict[int, str]) -> None:
    k = ex.sweep_n(store)
    ex.section(f"Mean ablation of each head (z) and of its q, k, v on the first {k} examples: loss increase per digit")
    rows = {hook: ex.sweep(f"mean-ablate {hook} of each head", lambda hook=hook: ablate(
        store, hook, "head", method="mean", examples=k, metrics=("loss",))) for hook in ("z", "q", "k", "v")}
    base = rows["z"].unique(["example_id", "answer_idx"])
    ex.say("clean loss per digit: " + ", ".join(
        f"c{i} {v:.4f}" for i, v in base.group_by("answer_idx").agg(pl.col("clean").mean()).sort("answer_idx").rows()))
    # effect = ablated loss - clean loss, per (head, digit); the seed's heatmap and per-digit lines
    z = effects(rows["z"], value="effect").with_columns(target=pl.format("L{}H{}", "layer", "head"),
                                                        digit=pl.format("c{}", "answer_idx"))
    ex.table(z.pivot(on="digit", index="target", values="mean")
             .join(z.group_by("target").agg(all=pl.col("mean").mean()), on="target").sort("target"),
             "z (the head's whole output): mean loss increase per digit and over all digits")
    overall = z.group_by("target", maintain_order=True).agg(pl.col("mean").mean()).sort("mean", descending=True)
    ex.key("ablate_z_top_head", overall["target"][0])
    ex.key("ablate_z_top_dloss", float(overall["mean"][0]))
    for (digit,), part in z.group_by("answer_idx", maintain_order=True):
        r = part.sort("mean", descending=True).row(0, named=True)
        ex.key(f"ablate_z_top_head_c{digit}", r["target"])
        ex.key(f"ablate_z_top_dloss_c{digit}", float(r["mean"]))
    ex.say(f"{overall['target'][0]} matters most (loss +{overall['mean'][0]:.2f} over all digits); "
           f"{overall['target'][-1]} least (+{overall['mean'][-1]:.2f})")

    qkv = pl.concat([effects(rows[h], value="effect") for h in ("q", "k", "v")]).with_columns(
        target=pl.format("L{}H{}", "layer", "head"))
    per = qkv.group_by("hook", "target", maintain_order=True).agg(pl.col("mean").mean())
    ex.table(per.pivot(on="target", index="hook", values="mean"), "q, k, v: mean loss increase over all digits")
    l0q = per.filter((pl.col("hook") == "q") & pl.col("target").str.starts_with("L0"))
    worst = l0q.sort("mean", descending=True).row(0, named=True)
    ex.say(f"mean-ablating a layer-0 query raises the loss by at most {worst['mean']:.3f} ({worst['target']}): "
           "layer-0 queries are nearly constant across inputs")
    ex.key("ablate_q_L0_max_dloss", float(worst["mean"]))

    ex.section("The same ablations split by whether the digit receives a carry (carry_i)")
    parts = []
    for hook in ("z", "q", "k", "v"):
        for i, col in carry_of.items():
            e = effects(rows[hook].filter(pl.col("answer_idx") == i), group_by=col, examples=store.examples,
                        value="effect")
            parts.append(e.rename({col: "carry"}).select("hook", "layer", "head", "answer_idx", "carry", "mean", "n"))
    split = (pl.concat(parts).with_columns(target=pl.format("L{}H{}", "layer", "head"))
             .pivot(on="carry", index=["hook", "target", "answer_idx"], values="mean"))
    for label in ("true", "false"):  # a few examples may all have (or all lack) a carry into a digit
        if label not in split.columns:
            split = split.with_columns(pl.lit(None, pl.Float64).alias(label))
    split = split.rename({"true": "carry", "false": "no_carry"}).with_columns(
        delta=pl.col("carry") - pl.col("no_carry"))
    ex.table(split.filter(pl.col("hook") == "z").select("answer_idx", "target", "no_carry", "carry", "delta")
             .sort("answer_idx", "target"), "z: loss increase without / with a carry into the digit")
    for (digit,), part in split.filter(pl.col("hook") == "z").group_by("answer_idx", maintain_order=True):
        part = part.filter(pl.col("delta").is_not_null())
        if part.height == 0:
            ex.say(f"digit c{digit}: the first {k} examples do not have both a carry and none into it")
            continue
        r = part.sort(pl.col("delta").abs(), descending=True).row(0, named=True)
        ex.say(f"digit c{digit}: a carry changes what ablating {r['target']} costs most "
               f"(+{r['no_carry']:.2f} -> +{r['carry']:.2f})")
        ex.key(f"ablate_carry_head_c{digit}", r["target"])
        ex.key(f"ablate_carry_delta_c{digit}", float(r["delta"]))
    ex.chart("ablation_z_carry_split", lambda: ch.effect_bars(rows["z"], store.examples, carry_of,
                                                              label_title="carry into digit"))
    l1k = (split.filter((pl.col("hook") == "k") & pl.col("target").str.starts_with("L1"))
           .select(pl.col("no_carry").mean(), pl.col("carry").mean()))
    no_carry, carry = l1k["no_carry"][0], l1k["carry"][0]
    if no_carry is not None and carry is not None:
        ex.say(f"layer-1 keys (mean over L1 heads and digits c0..c{len(carry_of) - 1}): ablating them costs "
               f"+{no_carry:.2f} without a carry, +{carry:.2f} with one")
        ex.key("ablate_k_L1_no_carry", float(no_carry))
        ex.key("ablate_k_L1_carry", float(carry))


def _every_digit(ex: Example, store) -> None:
    """DLA toward every digit (one row per token) and its Fourier view over the digits."""
    ex.section("DLA toward every digit (target=list(range(10))): each head's write to each digit's logit, "
               "and its Fourier view over the digits")
    every = dla(store, level="head", target=list(range(10)))
    heads = every.filter(pl.col("head").is_not_null())
    mean = heads.group_by("component", "token").agg(pl.col("value").mean())
    ex.table(mean.sort("token").pivot(on="token", index="component", values="value").sort("component"),
             "mean DLA toward each digit token (columns), over every example and sum digit")
    # the seed's Fourier view, per answer: each head's 10 digit logits in the Fourier basis over the tokens,
    # the constant component (a shift of every digit's logit alike) left out of the power
    f = fourier_table(heads.select("example_id", "answer_idx", pl.col("component").alias("head_name"), "token",
                                   "value"), over="token", by=["example_id", "answer_idx", "head_name"])
    power = (f.filter(pl.col("frequency") > 0).group_by("head_name", "frequency")
             .agg(power=(pl.col("value") ** 2).sum())
             .with_columns(share=pl.col("power") / pl.col("power").sum().over("head_name")))
    ex.table(power.sort("frequency").pivot(on="frequency", index="head_name", values="share").sort("head_name"),
             "share of each head's non-constant DLA power (over the digits) in each frequency (columns)")
    total = power.group_by("frequency").agg(pl.col("power").sum()).with_columns(
        share=pl.col("power") / pl.col("power").sum()).sort("share", descending=True)
    top = total.row(0, named=True)
    ex.say(f"over every head, frequency {top['frequency']} holds {top['share']:.0%} of the non-constant power "
           "of the DLA over the digits")
    ex.key("dla_digits_top_frequency", int(top["frequency"]))
    ex.key("dla_digits_top_frequency_share", float(top["share"]))
    # summed over every component, the row of the correct digit is the answer's logit less b_U: the DLA table
    # over every digit holds the plain DLA (target 'correct') as one of its tokens
    correct = every.join(store.outputs.select("example_id", "answer_idx", "correct_token"),
                         on=["example_id", "answer_idx"]).filter(pl.col("token") == pl.col("correct_token"))
    ex.key("dla_digits_correct_sum_mean",
           float(correct.group_by("example_id", "answer_idx").agg(pl.col("value").sum()).get_column("value").mean()))



def _topk(ex: Example, store) -> None:
    """A test_prompt-style table from the topk view: each answer's top tokens, and how often the top one is right."""
    ex.section("Top-k output tokens at each answer (SQL view topk), test_prompt style")
    first = store.sql(
        "SELECT t.answer_idx, o.correct_token, t.rank, t.str_token, t.logit, t.prob FROM topk t "
        "JOIN outputs o USING (example_id, answer_idx) "
        "WHERE t.example_id = 0 AND t.rank < 3 ORDER BY t.answer_idx, t.rank").pl()
    ex.table(first, "example 0: the 3 most likely tokens at each sum digit")
    top1 = store.sql(
        "SELECT t.answer_idx, avg(CAST(t.token_id = o.correct_token AS DOUBLE)) AS top1_correct, "
        "avg(t.prob) AS mean_top1_prob, count(*) AS answers FROM topk t "
        "JOIN outputs o USING (example_id, answer_idx) WHERE t.rank = 0 GROUP BY t.answer_idx "
        "ORDER BY t.answer_idx").pl()
    ex.table(top1, "per sum digit: share of answers whose top-1 token is the correct digit, mean top-1 probability")
    n = top1.get_column("answers").cast(pl.Float64)
    ex.key("topk_top1_correct", float((top1.get_column("top1_correct") * n).sum() / n.sum()))
    ex.key("topk_mean_top1_prob", float((top1.get_column("mean_top1_prob") * n).sum() / n.sum()))


def _query_roles(store) -> dict[int, str]:
    """answer_idx -> the token role at that answer's read position (from the stored tables)."""
    pos = store.outputs.filter(pl.col("example_id") == 0).select("answer_idx", "answer_pos")
    roles = store.tokens.filter(pl.col("example_id") == 0).select(pl.col("pos").alias("answer_pos"), "role")
    return dict(pos.join(roles, on="answer_pos").select("answer_idx", "role").iter_rows())


if __name__ == "__main__":
    run(main)

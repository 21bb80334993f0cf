"""Seed 000 through a store: list-index update `BOS a0 a1 a2 NL idx elt NL b0 b1 b2` on zoo:list_update.

Ingests the zoo model on the list_update task, then redoes the seed's analysis from the store:
accuracy, logit lens, direct logit attribution by layer and by head, the mean attention pattern
of each head from the answer positions, and the full OV circuits (L0H0, L1H0 and the virtual
head L0H0 -> L1H0), each split by `changed` (elt differs from a[idx]) and by whether the answer
slot is the updated one (answer_idx == idx); then the seed's activation patching through the store
(actstore.interventions, on the first --sweep-n examples): each example's corrupted twin has
another elt (so another b at the updated slot), the twin is run with one clean activation
patched in, and the normalised score (patched - corrupted) / (clean - corrupted) of the logit
difference (the clean update's token minus the twin's) at the updated slot says how much that
activation restores: resid_pre by layer x position and, per head, its output z, query q, key k,
value v and attention pattern by position (the seed corrupts idx in one example; the store's
twins corrupt elt, in every example).

    .venv/bin/python examples/seed000_list_update.py --n 4000 --charts stores/charts/seed000
"""

from __future__ import annotations

import numpy as np
import polars as pl
from _common import Example, head_label, run

import actstore.charts as ch
from actstore.interventions import patch
from actstore.query import attention, breakdown, circuit_matrix, dla, logit_lens, ov_circuit, virtual_ov
from actstore.query.interventions import normalised

HEAD_HOOKS = ("z", "q", "k", "v", "pattern")


def main() -> None:
    ex = Example("seed000_list_update", __doc__, default_n=4000)
    store = ex.store("list_update", "zoo:list_update")
    examples = store.examples
    cfg = store.config
    n_layers, n_heads = int(cfg["n_layers"]), int(cfg["n_heads"])
    print(f"model: {n_layers} layers x {n_heads} heads, d_model {cfg['d_model']}; "
          f"{store.n_examples} examples, {store.n_answers} answers each")

    # slot label per answer row: is this answer the updated position (answer_idx == idx)?
    def with_slot(t: pl.DataFrame) -> pl.DataFrame:
        t = t.join(examples.select("example_id", "idx", "changed"), on="example_id", how="left")
        return t.with_columns(slot=pl.when(pl.col("answer_idx") == pl.col("idx")).then(pl.lit("updated"))
                              .otherwise(pl.lit("kept")))

    ex.section("Accuracy (outputs table)")
    out = with_slot(store.outputs)
    acc = (out.group_by("changed", "slot").agg(answers=pl.len(), accuracy=pl.col("correct").mean(),
                                                mean_prob=pl.col("prob").mean())
           .sort("changed", "slot"))
    ex.table(acc)
    ex.key("accuracy", float(out.get_column("correct").mean()))
    ex.key("n_unchanged_examples", int((~examples.get_column("changed")).sum()))

    ex.section("Logit lens: correct-token logit after each stage (accumulated residual), by slot")
    lens_raw = logit_lens(store)
    lens = with_slot(lens_raw)
    lens_tab = breakdown(lens, group_by="slot", keys=["layer", "stage"]).select("slot", "layer", "stage", "mean", "n")
    ex.table(lens_tab.pivot(on="slot", index=["layer", "stage"], values="mean"))
    final_mean = float(lens.filter(pl.col("stage") == "resid_post").get_column("value").mean())
    ex.key("logit_lens_final_mean", final_mean)

    ex.section("Direct logit attribution by layer (correct token)")
    by_layer = with_slot(dla(store, level="layer"))
    ex.table(breakdown(by_layer, group_by="slot", keys=["component"])
             .select("slot", "component", "mean", "ci_low", "ci_high", "n")
             .pivot(on="slot", index="component", values="mean"))

    ex.section("Direct logit attribution by head, split by changed and by slot")
    head_raw = dla(store, level="head")
    by_head = with_slot(head_raw)
    split = (breakdown(by_head, group_by=["changed", "slot"], keys=["component", "layer", "head"])
             .filter(pl.col("head").is_not_null()))
    ex.table(split.select("changed", "slot", "component", "mean", "ci_low", "ci_high", "n"))
    heads = (by_head.filter(pl.col("head").is_not_null()).group_by("component")
             .agg(pl.col("value").mean()).sort("value", descending=True))
    top = heads.row(0, named=True)
    ex.say(f"{top['component']} carries the most direct attribution to the correct token "
           f"(mean {top['value']:.2f} of a mean correct logit minus b_U of {final_mean:.2f})")
    ex.key("top_head", top["component"])
    ex.key("top_head_dla_mean", float(top["value"]))
    total = by_head.group_by("example_id", "answer_idx").agg(pl.col("value").sum())
    ex.key("dla_sum_mean", float(total.get_column("value").mean()))

    ex.section("Mean attention pattern of each head from the answer positions (query pos x key role)")
    answer_pos = sorted(store.outputs.get_column("answer_pos").unique().to_list())
    pat = attention(store, query=answer_pos, group_by=["q_pos", "k_pos"])
    roles = (store.tokens.filter(pl.col("example_id") == 0).select("pos", "role"))
    pat = (pat.join(roles.rename({"pos": "k_pos", "role": "k_role"}), on="k_pos")
           .join(roles.rename({"pos": "q_pos", "role": "q_role"}), on="q_pos")
           .with_columns(key=pl.format("{}:{}", pl.col("k_pos"), pl.col("k_role")),
                         query=pl.format("{}:{}", pl.col("q_pos"), pl.col("q_role"))))
    for layer in range(n_layers):
        for head in range(n_heads):
            t = pat.filter((pl.col("layer") == layer) & (pl.col("head") == head)).sort("q_pos", "k_pos")
            ex.table(t.pivot(on="key", index="query", values="mean").fill_null(0.0),
                     f"{head_label(layer, head)}: mean attention from each answer position (rows) to each key")

    ex.section("Where each head looks from answer slot i: the answer's source (a_i if kept, elt if updated)")
    per = attention(store, query=answer_pos, key=["a0", "a1", "a2", "elt", "idx"],
                    group_by=["q_pos", "k_role", "idx", "changed"])
    per = per.with_columns(slot_i=pl.col("q_pos") - answer_pos[0])
    per = per.with_columns(source=pl.when(pl.col("slot_i") == pl.col("idx")).then(pl.lit("elt"))
                           .otherwise(pl.format("a{}", pl.col("slot_i"))),
                           slot=pl.when(pl.col("slot_i") == pl.col("idx")).then(pl.lit("updated"))
                           .otherwise(pl.lit("kept")))
    src = per.filter(pl.col("k_role") == pl.col("source"))
    # weighted mean over (q_pos, idx) groups: mass on the source key
    src_tab = (src.group_by("layer", "head", "changed", "slot")
               .agg(mass_on_source=(pl.col("mean") * pl.col("n")).sum() / pl.col("n").sum(), n=pl.col("n").sum())
               .sort("layer", "head", "changed", "slot"))
    ex.table(src_tab)
    best = (src.group_by("layer", "head").agg(m=(pl.col("mean") * pl.col("n")).sum() / pl.col("n").sum())
            .sort("m", descending=True).row(0, named=True))
    ex.say(f"{head_label(best['layer'], best['head'])} attends most to the answer's source token "
           f"(mean mass {best['m']:.3f})")
    ex.key("source_attention_head", head_label(best["layer"], best["head"]))
    ex.key("source_attention_mass", float(best["m"]))

    ex.section("Full OV circuits W_E W_OV W_U on the number tokens")
    n_num = int(store.manifest.task_params.get("max_num", 50))
    nums = list(range(n_num))
    circuits = {head_label(layer, head): circuit_matrix(ov_circuit(store, layer, head, tokens=nums, outputs=nums))
                for layer in range(n_layers) for head in range(n_heads)}
    if n_layers > 1:
        circuits[f"{head_label(0, 0)}>{head_label(1, 0)} (virtual)"] = circuit_matrix(
            virtual_ov(store, (0, 0), (1, 0), tokens=nums, outputs=nums))
    rows = []
    for name, m in circuits.items():
        diag = np.diag(m)
        off = m[~np.eye(n_num, dtype=bool)]
        rows.append({"circuit": name, "top1_on_diagonal": float((m.argmax(1) == np.arange(n_num)).mean()),
                     "diag_mean": float(diag.mean()), "offdiag_mean": float(off.mean()),
                     "copy_score_z": float((diag.mean() - off.mean()) / off.std()),
                     "positive_eigenvalue_share": _pos_eig_share(m)})
    ov = pl.DataFrame(rows)
    ex.table(ov)
    last = head_label(n_layers - 1, 0)
    l1 = ov.filter(pl.col("circuit") == last).row(0, named=True)
    ex.key(f"ov_{last}_top1_diagonal", l1["top1_on_diagonal"])
    ex.key(f"ov_{last}_copy_score_z", l1["copy_score_z"])

    _patching(ex, store)

    ex.chart("logit_lens", lambda: ch.logit_lens_lines(lens_raw))
    ex.chart("dla_by_head_changed", lambda: ch.component_bars_by(head_raw, examples, "changed"))
    ex.chart("attention",
             lambda: ch.attention_heatmap(attention(store, query=answer_pos, group_by=["q_role", "k_role"])))
    ex.chart(f"ov_{last}", lambda: ch.circuit_heatmap(circuits[last], f"Full OV circuit of {last}",
                                                   row_labels=[str(i) for i in nums],
                                                   col_labels=[str(i) for i in nums]))
    ex.finish()


def _patching(ex: Example, store) -> None:
    k = ex.sweep_n(store)
    ex.section(f"Activation patching on the first {k} examples (denoise: the twin with another elt, one clean "
               "activation patched in; scored at the updated slot)")
    rows = {"resid_pre": ex.sweep("patch resid_pre by layer x position", lambda: patch(
        store, "resid_pre", "layer,pos", examples=k, metrics=("logit_diff",)))}
    for hook in HEAD_HOOKS:
        rows[hook] = ex.sweep(f"patch {hook} of each head by position", lambda hook=hook: patch(
            store, hook, "head,pos", examples=k, metrics=("logit_diff",)))
    # position labels: the role, numbered where it repeats (NL4, NL7); 'query' is the position the
    # updated slot's answer is read at (it moves with idx); later positions cannot matter and are left out
    roles = store.tokens.filter(pl.col("example_id") == 0).sort("pos")
    counts = roles.group_by("role").len()
    labels = (roles.join(counts, on="role")
              .select("pos", label=pl.when(pl.col("len") > 1).then(pl.format("{}{}", "role", "pos"))
                      .otherwise(pl.col("role"))))
    order = [*labels.get_column("label").to_list(), "query"]
    updated = (store.outputs.join(store.examples.select("example_id", "idx"), on="example_id")
               .filter(pl.col("answer_idx") == pl.col("idx")).select("example_id", "answer_idx", "answer_pos"))

    def at_slot(t: pl.DataFrame) -> pl.DataFrame:
        t = normalised(t).join(updated, on=["example_id", "answer_idx"]).filter(pl.col("pos") <= pl.col("answer_pos"))
        t = t.join(labels, on="pos")
        return t.with_columns(label=pl.when(pl.col("pos") == pl.col("answer_pos")).then(pl.lit("query"))
                              .otherwise(pl.col("label")))

    base = at_slot(rows["resid_pre"]).unique("example_id")
    clean, corrupted = float(base["clean"].mean()), float(base["corrupted"].mean())
    ex.say(f"logit difference clean b - twin b at the updated slot: clean {clean:.2f}, twin {corrupted:.2f}")
    ex.key("patch_clean_logit_diff", clean)
    ex.key("patch_corrupted_logit_diff", corrupted)
    scores = pl.concat([breakdown(at_slot(t).with_columns(target=pl.when(pl.col("head").is_null())
                                                          .then(pl.format("L{}", "layer"))
                                                          .otherwise(pl.format("L{}H{}", "layer", "head"))),
                                  group_by=[], value="score", keys=["hook", "target", "label"]) for t in rows.values()])
    present = [c for c in order if c in set(scores.get_column("label").to_list())]
    ex.table(scores.pivot(on="label", index=["hook", "target"], values="mean").select("hook", "target", *present),
             "mean normalised score by target and position (1: the clean update restored)")
    at = {(r["hook"], r["target"], r["label"]): r for r in scores.iter_rows(named=True)}
    ex.key("patch_resid_pre_L0_elt", float(at["resid_pre", "L0", "elt"]["mean"]))
    ex.key("patch_resid_pre_L1_elt", float(at["resid_pre", "L1", "elt"]["mean"]))
    ex.key("patch_resid_pre_L1_query", float(at["resid_pre", "L1", "query"]["mean"]))
    for hook in HEAD_HOOKS:
        r = scores.filter(pl.col("hook") == hook).sort("mean", descending=True).row(0, named=True)
        ex.key(f"patch_{hook}_top", f"{r['target']} {r['label']}")
        ex.key(f"patch_{hook}_top_score", float(r["mean"]))
    ex.chart("patch_resid_pre", lambda: ch.position_heatmap(rows["resid_pre"], tokens=store.tokens))
    ex.chart("patch_v", lambda: ch.position_heatmap(rows["v"], tokens=store.tokens))
    v = scores.filter(pl.col("hook") == "v").sort("mean", descending=True).row(0, named=True)
    qk = scores.filter(pl.col("hook").is_in(["q", "k", "pattern"])).sort(pl.col("mean").abs(), descending=True)
    w = qk.row(0, named=True)
    ex.say(f"the new element reaches the answer as a value: v of {v['target']} at {v['label']} restores "
           f"{v['mean']:.3f}; no query, key or pattern patch restores more than {abs(w['mean']):.3f} "
           f"({w['hook']} of {w['target']} at {w['label']}): the twin changes what is moved, not where heads look")


def _pos_eig_share(m: np.ndarray) -> float:
    """Sum of positive real parts of the eigenvalues over the sum of their magnitudes (1 = pure copying)."""
    ev = np.linalg.eigvals(m)
    return float(ev.real.clip(min=0).sum() / np.abs(ev).sum())


if __name__ == "__main__":
    run(main)

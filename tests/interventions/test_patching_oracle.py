"""Exact patching equals TransformerLens's own patching functions, per example and on average.

Each case runs `actstore.interventions.patch` and the matching `transformer_lens.patching`
function (`get_act_patch_resid_pre`, `..._attn_head_out_by_pos`, ...; the 'layer' grain and
resid_post through TransformerLens's `generic_activation_patch` with its own setters) on the same
examples: denoise is TransformerLens's default (corrupted tokens, clean cache), noise the reverse.
TransformerLens's metric records every example's logit_diff / correct_logit / logprob / loss at
every answer, so each stored row is checked, and TransformerLens's returned mean is checked
against the mean of our rows.

Models: a tiny in-test model with MLPs and LayerNorm (every hook), the addition zoo
(attention-only), list_update (shortformer positions) and brackets (bidirectional: examples of
different lengths, run by TransformerLens one at a time, unpadded, against our padded batches).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import polars as pl
import pytest
import torch
import transformer_lens.patching as P
from iv_helpers import Examples, compare, metrics_of, model_of, ref_frame, rows_of

from actstore.interventions import patch
from actstore.interventions.model import model_for


def _whole_layer(corrupted, index, clean):
    """TransformerLens patch setter for the 'layer' grain: every position of the layer."""
    corrupted[...] = clean
    return corrupted


def tl_function(hook: str, grain: str):
    if grain == "layer":
        return partial(P.generic_activation_patch, patch_setter=_whole_layer, activation_name=hook,
                       index_axis_names=("layer",))
    if grain == "layer,pos":
        if hook == "resid_post":  # TransformerLens has no named function for it
            return partial(P.generic_activation_patch, patch_setter=P.layer_pos_patch_setter,
                           activation_name="resid_post", index_axis_names=("layer", "pos"))
        return getattr(P, f"get_act_patch_{hook}")
    name = {"z": "out", "q": "q", "k": "k", "v": "v", "pattern": "pattern"}[hook]
    return getattr(P, f"get_act_patch_attn_head_{name}_{'by_pos' if grain == 'head,pos' else 'all_pos'}")


def tl_reference(net, fn, ex: Examples, mode: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(per-example rows, TransformerLens's own means) of `fn`, one TransformerLens call per
    example when the examples differ in length (no padding), else one call for all."""
    parts = [ex] if ex.equal_length else [ex.one(i) for i in range(len(ex))]
    refs, means = [], []
    for part in parts:
        base, source = (part.corrupted, part.clean) if mode == "denoise" else (part.clean, part.corrupted)
        _, cache = net.run_with_cache(source)
        recorded: list[torch.Tensor] = []

        def metric(logits: torch.Tensor, part: Examples = part, recorded: list = recorded) -> torch.Tensor:
            m = metrics_of(logits, part)
            recorded.append(m)
            return m[:, 0, 0].mean()

        with torch.no_grad():
            out, index_df = fn(net, base, cache, metric, return_index_df=True)
        rows, tl = [], []
        for i, (_, row) in enumerate(index_df.iterrows()):
            key = {"layer": None, "head": None, "pos": None}
            for col, v in row.items():
                key[{"dest_pos": "pos", "head_index": "head"}.get(col, col)] = int(v)
            rows += rows_of(recorded[i], part, key["layer"], key["head"], key["pos"])
            tl.append({**key, "tl": float(out[tuple(int(v) for v in row.to_list())]), "n": len(part)})
        refs.append(ref_frame(rows))
        means.append(pl.DataFrame(tl, schema={"layer": pl.Int64, "head": pl.Int64, "pos": pl.Int64, "tl": pl.Float64,
                                              "n": pl.Int64}))
    return pl.concat(refs), pl.concat(means)


def check_against_tl(store, name: str, hook: str, grain: str, mode: str, n: int, start: int = 0,
                     **sizes: int) -> dict[str, float]:
    """Our sweep of examples [start, start + n) (batch / rows / part in `sizes`) against TransformerLens."""
    net = model_of(name) or model_for(store)
    ex = Examples(store, start, start + n)
    ours = patch(store, hook, grain, mode=mode, examples=(start, start + n), model=model_of(name), **sizes)
    ref, tl = tl_reference(net, tl_function(hook, grain), ex, mode)
    # the clean / corrupted baselines are the unpatched runs' metrics
    base_rows = []
    for i in range(len(ex)):
        one = ex.one(i)
        with torch.no_grad():
            base_rows.append((metrics_of(net(one.clean), one), metrics_of(net(one.corrupted), one)))
    scale = max(1.0, float(ref["ref"].abs().max()))
    atol = 1e-4 * scale
    diff = compare(ours, ref)
    assert diff <= atol, f"{name} {hook} {grain} {mode}: max |ours - TransformerLens| = {diff}"
    # the patch does something: the rows are not all the base run's metric (a test that could not fail)
    base_col = "corrupted" if mode == "denoise" else "clean"
    assert float((ours["value"] - ours[base_col]).abs().max()) > 100 * atol
    for col, k in (("clean", 0), ("corrupted", 1)):
        want = ref_frame([r for i in range(len(ex)) for r in rows_of(base_rows[i][k], ex.one(i), 0, None, None)])
        got = ours.filter(pl.col("layer") == ours["layer"].min()).unique(["example_id", "answer_idx", "metric"])
        got = got.with_columns(layer=pl.lit(0, pl.Int64), head=pl.lit(None, pl.Int64), pos=pl.lit(None, pl.Int64))
        assert compare(got, want, col) <= atol
    # TransformerLens's own output: the mean over examples of logit_diff at answer 0 (weighted by
    # example count where it ran one example at a time)
    ld = ours.filter((pl.col("metric") == "logit_diff") & (pl.col("answer_idx") == 0))
    mine = ld.group_by(["layer", "head", "pos"]).agg(pl.col("value").cast(pl.Float64).mean().alias("ours"),
                                                     pl.len().alias("n_ours"))
    theirs = tl.group_by(["layer", "head", "pos"]).agg(((pl.col("tl") * pl.col("n")).sum() / pl.col("n").sum())
                                                       .alias("tl"), pl.col("n").sum())
    both = mine.join(theirs, on=["layer", "head", "pos"], nulls_equal=True)
    assert both.height == mine.height == theirs.height
    assert (both["n_ours"] == both["n"]).all()
    mean_diff = float((both["ours"] - both["tl"]).abs().max())
    assert mean_diff <= atol
    print(f"{name} {hook} {grain} {mode}: rows {ours.height}, max diff per example {diff:.2e}, "
          f"of TL means {mean_diff:.2e} (scale {scale:.1f})")
    return {"rows": diff, "means": mean_diff}


LAYER_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_HOOKS = ("z", "q", "k", "v", "pattern")
ALL = [(h, g) for h in LAYER_HOOKS for g in ("layer", "layer,pos")] + \
      [(h, g) for h in HEAD_HOOKS for g in ("head", "head,pos")]


MODES = ("denoise", "noise")


def cases(hooks_grains: list[tuple[str, str]], parity: int) -> list:
    """Every (hook, grain) in both modes; the default run takes one mode per pair (alternating, and
    the other model of the pair takes the other mode), the rest are marked slow."""
    out = []
    for hook, grain in hooks_grains:
        i = ALL.index((hook, grain))
        for mode in MODES:
            marks = () if mode == MODES[(i + parity) % 2] else (pytest.mark.slow,)
            out.append(pytest.param(hook, grain, mode, marks=marks, id=f"{hook}-{grain}-{mode}"))
    return out


@pytest.mark.parametrize(("hook", "grain", "mode"), cases(ALL, 0))
def test_every_grain_on_a_model_with_mlps(iv_store, hook, grain, mode):
    check_against_tl(iv_store("mlp"), "mlp", hook, grain, mode, n=6)


ATTN_ONLY = [(h, g) for h, g in ALL if h not in ("resid_mid", "mlp_out")]


@pytest.mark.parametrize(("hook", "grain", "mode"), cases(ATTN_ONLY, 1))
def test_every_grain_on_the_addition_zoo(iv_store, hook, grain, mode):
    check_against_tl(iv_store("addition"), "addition", hook, grain, mode, n=8)


@pytest.mark.parametrize(("hook", "grain", "mode"), [
    ("resid_pre", "layer,pos", "denoise"), ("resid_post", "layer", "noise"), ("attn_out", "layer,pos", "noise"),
    ("z", "head,pos", "denoise"), ("q", "head", "noise"), ("k", "head,pos", "denoise"), ("v", "head,pos", "noise"),
    ("pattern", "head,pos", "denoise"), ("pattern", "head", "noise"),
])
def test_shortformer_positions(iv_store, hook, grain, mode):
    """list_update: no LayerNorm, positional embedding added to q/k only (shortformer)."""
    check_against_tl(iv_store("list_update"), "list_update", hook, grain, mode, n=6)


@pytest.mark.parametrize(("hook", "grain", "mode"), [
    ("resid_pre", "layer,pos", "denoise"), ("resid_mid", "layer,pos", "noise"), ("mlp_out", "layer", "denoise"),
    ("attn_out", "layer,pos", "noise"), ("k", "head", "noise"),
    # 15-20 s each at load 12: head,pos on padded batches stays by default through pattern-head,pos-denoise
    pytest.param("z", "head,pos", "denoise", marks=pytest.mark.slow),
    pytest.param("v", "head,pos", "noise", marks=pytest.mark.slow),
    ("pattern", "head,pos", "denoise"), ("pattern", "head", "noise"),
])
def test_bidirectional_with_padding(iv_store, hook, grain, mode):
    """brackets: examples of different lengths batched with padding (keys masked) against
    TransformerLens on each example alone; rows exist only at each example's own positions."""
    store = iv_store("brackets")
    lengths = store.examples.sort("example_id")["length"].to_numpy()[:6]
    assert len(set(lengths.tolist())) > 2  # the batch is really padded
    check_against_tl(store, "brackets", hook, grain, mode, n=6)


@pytest.mark.parametrize(("name", "hook", "grain", "sizes"), [
    ("addition", "z", "head,pos", dict(batch=3, rows=7)),        # 2 targets per pass, a short last batch
    ("brackets", "pattern", "head,pos", dict(batch=2, rows=5, part=3)),
    ("mlp", "resid_mid", "layer,pos", dict(batch=4, rows=1)),    # rows < batch: one target per pass
])
def test_batches_row_limits_and_ranges_do_not_change_values(iv_store, name, hook, grain, sizes):
    """Examples 3..9 (not from 0) in small batches and passes: the same rows TransformerLens gives."""
    check_against_tl(iv_store(name), name, hook, grain, "denoise", n=7, start=3, **sizes)


def test_positions_past_an_examples_end_have_no_rows(iv_store):
    store = iv_store("brackets")
    rows = patch(store, "resid_pre", "layer,pos", examples=8)
    lengths = dict(zip(*store.examples.select("example_id", "length").to_numpy().T))
    per_ex = rows.group_by("example_id").agg(pl.col("pos").max(), pl.col("pos").n_unique().alias("n"))
    for eid, top, count in per_ex.iter_rows():
        assert top == lengths[eid] - 1 and count == lengths[eid]
    assert set(np.unique(rows["example_id"].to_numpy())) == set(range(8))

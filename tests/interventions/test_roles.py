"""Positions addressed by role: on IOI (zoo:lm), prompts of different lengths put S2 and END at
different indices; each example is patched at its own S2 / END, exactly as a TransformerLens hook
on that example alone does it. Positions past an example's end and roles an example lacks give
no rows."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
from iv_helpers import Examples, act_name, cache_of, compare, hooked_metrics, ref_frame, rows_of

from actstore.interventions import patch
from actstore.interventions.model import model_for

N = 10


def per_example_reference(net, ex: Examples, hook: str, slots: list[list[int | None]], heads: list[int | None],
                          mode: str = "denoise") -> pl.DataFrame:
    """Rows of patching `hook` at each example's own positions slots[i] (None: not there), one
    TransformerLens run per (example, layer, head, position), the example alone (unpadded)."""
    rows = []
    for i in range(len(ex)):
        one = ex.one(i)
        clean, corrupted = torch.tensor(one.clean_list), torch.tensor(one.corrupted_list)
        base, source = (corrupted, clean) if mode == "denoise" else (clean, corrupted)
        cache = cache_of(net, source)
        for layer in range(net.cfg.n_layers):
            name = act_name(hook, layer)
            for head in heads:
                for p in slots[i]:
                    if p is None:
                        continue

                    def put(x, hook, name=name, p=p, head=head):
                        if head is None:
                            x[:, p] = cache[name][:, p]
                        else:
                            x[:, p, head] = cache[name][:, p, head]
                        return x

                    rows += rows_of(hooked_metrics(net, base, one, [(name, put)]), one, layer, head, p)
    return ref_frame(rows)


def test_s2_and_end_are_each_examples_own_positions(iv_store):
    store = iv_store("ioi")
    ex = Examples(store, 0, N)
    assert len(set(ex.lengths.tolist())) > 1
    s2, end = ex.frame["s2_pos"].to_list(), ex.frame["end_pos"].to_list()
    assert len(set(s2)) > 1 and len(set(end)) > 1  # the roles sit at different indices
    net = model_for(store)
    ours = patch(store, "resid_pre", "layer,pos", pos="S2,END", examples=N)
    assert ours.height == net.cfg.n_layers * N * 2 * 4  # layers x examples x roles x metrics (1 answer)
    want_pos = {(e, "S2"): p for e, p in zip(ex.ids, s2)} | {(e, "END"): p for e, p in zip(ex.ids, end)}
    for e, role, p in ours.select("example_id", "role", "pos").iter_rows():
        assert want_pos[(e, role)] == p
    ref = per_example_reference(net, ex, "resid_pre", [[a, b] for a, b in zip(s2, end)], [None])
    diff = compare(ours, ref)
    assert diff < 1e-4 * max(1.0, float(ref["ref"].abs().max())), diff
    print(f"ioi resid_pre at S2,END: max diff {diff:.2e}")
    # the two roles are different targets with different effects
    ld = ours.filter(pl.col("metric") == "logit_diff").group_by("role").agg(pl.col("value").mean())
    assert ld["value"].n_unique() == 2


def test_role_addressed_heads_on_ioi(iv_store):
    store = iv_store("ioi")
    ex = Examples(store, 0, 6)
    net = model_for(store)
    ours = patch(store, "z", "head,pos", pos="S2", mode="noise", examples=6)
    ref = per_example_reference(net, ex, "z", [[p] for p in ex.frame["s2_pos"].to_list()],
                                list(range(net.cfg.n_heads)), mode="noise")
    assert (ours["role"] == "S2").all()
    diff = compare(ours, ref)
    assert diff < 1e-4 * max(1.0, float(ref["ref"].abs().max())), diff
    print(f"ioi z by head at S2 (noise): max diff {diff:.2e}")


def test_indices_past_an_examples_end_give_no_rows(iv_store):
    store = iv_store("ioi")
    ex = Examples(store, 0, N)
    net = model_for(store)
    top = int(ex.lengths.max())
    asked = [0, top - 2, top - 1]
    assert (ex.lengths <= top - 2).any()  # some examples end before the last two indices
    ours = patch(store, "resid_pre", "layer,pos", pos=",".join(map(str, asked)), examples=N)
    slots = [[p if p < length else None for p in asked] for length in ex.lengths]
    ref = per_example_reference(net, ex, "resid_pre", slots, [None])
    assert compare(ours, ref) < 1e-4 * max(1.0, float(ref["ref"].abs().max()))
    for e, length in zip(ex.ids, ex.lengths):
        got = set(ours.filter(pl.col("example_id") == e)["pos"].to_list())
        assert got == {p for p in asked if p < length}


def test_a_role_some_examples_lack_gives_rows_only_where_it_is(marked_store):
    store, net = marked_store
    n = store.n_examples
    ex = Examples(store, 0, n)
    tokens = store.tokens.filter(pl.col("role") == "M")
    where = dict(zip(tokens["example_id"].to_list(), tokens["pos"].to_list()))
    assert 0 < len(where) < n
    metrics = ("correct_logit", "logprob", "loss")  # the task has no counterfactual token
    ours = patch(store, "resid_pre", "layer,pos", pos="M,END", examples=n, model=net, metrics=metrics)
    assert set(ours.filter(pl.col("role") == "M")["example_id"].to_list()) == set(where)
    assert set(ours.filter(pl.col("role") == "END")["example_id"].to_list()) == set(range(n))
    # values: each example patched at its own marker / end, alone
    rows = []
    for i in range(n):
        one = ex.one(i)
        clean, corrupted = torch.tensor(one.clean_list), torch.tensor(one.corrupted_list)
        cache = cache_of(net, clean)
        for layer in range(net.cfg.n_layers):
            name = act_name("resid_pre", layer)
            for p in [where.get(int(one.ids[0])), int(one.lengths[0]) - 1]:
                if p is None:
                    continue

                def put(x, hook, p=p, name=name):
                    x[:, p] = cache[name][:, p]
                    return x

                rows += rows_of(hooked_metrics(net, corrupted, one, [(name, put)]), one, layer, None, p)
    ref = ref_frame(rows).filter(pl.col("metric").is_in(metrics))  # no logit_diff: no counter token
    assert compare(ours, ref) < 1e-4
    assert np.isfinite(ours["value"].to_numpy()).all()

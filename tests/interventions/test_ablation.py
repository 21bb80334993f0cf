"""Zero, mean and resample ablation equal a hand-written TransformerLens hook run.

The reference runs each clean example alone (unpadded) through TransformerLens with one hook that
writes the ablation value into the target slice. Means are computed here from the store's own
activations (`store.read`, real tokens only) for hooks the store holds (z), and from the model's
TransformerLens cache for hooks it does not (q); they are over every example of the store, per
group: all tokens, position index, role (tokens without a role form one group) or (label, position).
Resampling takes another example of the same length of the sweep (`ablation.derangement`), whose
activation the reference takes from that example's own cache.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl
import pytest
import torch
from iv_helpers import Examples, act_name, cache_of, compare, hooked_metrics, model_of, ref_frame, rows_of

from actstore.interventions import ablate
from actstore.interventions.ablation import derangement
from actstore.interventions.model import model_for

HEAD_HOOKS = ("z", "q", "k", "v", "pattern")
# (example id, layer) -> [1, pos, ...] the values written (None: zeros)
Source = Callable[[int, int], torch.Tensor | None]


def reference(net, ex: Examples, what: str, grain: str, source: Source) -> pl.DataFrame:
    """Rows of ablating every target of `grain`, each example alone, with `source`'s values."""
    heads = list(range(net.cfg.n_heads)) if what in HEAD_HOOKS else [None]
    rows = []
    for i in range(len(ex)):
        one = ex.one(i)
        tokens = torch.tensor(one.clean_list)
        length = int(one.lengths[0])
        positions = list(range(length)) if grain.endswith(",pos") else [None]
        for layer in range(net.cfg.n_layers):
            src = source(int(one.ids[0]), layer)
            if src is not None:  # the store's width -> this example's length
                src = src[:, :, :length, :length] if what == "pattern" else src[:, :length]
            for head in heads:
                for p in positions:
                    def put(x, hook, head=head, p=p, src=src):
                        if what == "pattern":  # [b, head, q, k]
                            idx = (slice(None), head) if p is None else (slice(None), head, p)
                        elif head is None:     # [b, pos, d_model]
                            idx = (slice(None),) if p is None else (slice(None), p)
                        else:                  # [b, pos, head, d_head]
                            idx = (slice(None), slice(None), head) if p is None else (slice(None), p, head)
                        x[idx] = 0.0 if src is None else src[idx]
                        return x

                    m = hooked_metrics(net, tokens, one, [(act_name(what, layer), put)])
                    rows += rows_of(m, one, layer, head, p)
    return ref_frame(rows)


def check(ours: pl.DataFrame, ref: pl.DataFrame) -> float:
    diff = compare(ours, ref)
    assert diff <= 1e-4 * max(1.0, float(ref["ref"].abs().max())), diff
    assert float((ours["value"] - ours["clean"]).abs().max()) > 1e-2  # the ablation changes something
    return diff


def store_groups(store, over: str) -> tuple[np.ndarray, np.ndarray]:
    """([n, width] group key of each token, [n, width] real-token mask) for every example of the store."""
    ex = store.examples.sort("example_id")
    n, width = ex.height, store.manifest.width
    real = np.arange(width)[None, :] < ex["length"].to_numpy()[:, None]
    if over == "all":
        keys = np.zeros((n, width), dtype=object)
    elif over == "pos":
        keys = np.broadcast_to(np.arange(width), (n, width)).astype(object)
    elif over == "role":
        keys = np.full((n, width), "<none>", dtype=object)
        t = store.tokens.filter(pl.col("role").is_not_null())
        keys[t["example_id"].to_numpy(), t["pos"].to_numpy()] = t["role"].to_numpy()
    else:
        label = ex[over.removeprefix("label:")].to_list()
        keys = np.empty((n, width), dtype=object)
        for i in range(n):
            for p in range(width):
                keys[i, p] = f"{label[i]}|{p}"
    return keys, real


def group_mean_source(acts: np.ndarray, keys: np.ndarray, real: np.ndarray, hook: str) -> Source:
    """acts: [n, width, ...] token-major activations of every store example (float64) -> for each
    example, its tokens' group means, in the hook's layout, batch of one."""
    means: dict[object, np.ndarray] = {}
    for key in {k for k, r in zip(keys.reshape(-1), real.reshape(-1)) if r}:
        sel = (keys == key) & real
        means[key] = acts[sel].mean(axis=0)

    def source(i: int, layer: int) -> torch.Tensor:
        vals = np.stack([means.get(k, np.zeros_like(next(iter(means.values())))) for k in keys[i]])
        t = torch.tensor(vals, dtype=torch.float32)[None]  # [1, width, ...]
        return t.movedim(1, 2) if hook == "pattern" else t

    return source


def stored_means(store, hook: str, over: str) -> Source:
    keys, real = store_groups(store, over)
    per_layer = {}
    for layer in range(store.arch.n_layers):
        acts = store.read(act_name(hook, layer)).astype(np.float64)  # [n, width, ...] ([n, head, q, k])
        if hook == "pattern":
            acts = np.moveaxis(acts, 2, 1)  # token-major [n, q, head, k]
        per_layer[layer] = group_mean_source(acts, keys, real, hook)
    return lambda i, layer: per_layer[layer](i, layer)


def model_means(store, net, hook: str, over: str) -> Source:
    """Group means from the model: each example of the store alone through TransformerLens."""
    keys, real = store_groups(store, over)
    every = Examples(store, 0, store.n_examples)
    width = store.manifest.width
    per_layer = {}
    for layer in range(store.arch.n_layers):
        acts = None
        for i in range(len(every)):
            a = cache_of(net, torch.tensor(every.clean_list[i]))[act_name(hook, layer)][0].double()
            a = a.movedim(1, 0) if hook == "pattern" else a  # token-major [pos, ...]
            if acts is None:
                acts = np.zeros((len(every), width, *a.shape[1:]))
            acts[i, : a.shape[0]] = a.numpy()  # (pattern keys past the length stay 0, as padding does)
        per_layer[layer] = group_mean_source(acts, keys, real, hook)
    return lambda i, layer: per_layer[layer](i, layer)


@pytest.mark.parametrize(("name", "hook", "grain"), [
    ("mlp", "z", "head"), ("mlp", "attn_out", "layer,pos"), ("mlp", "mlp_out", "layer"),
    ("addition", "pattern", "head,pos"), ("brackets", "v", "head,pos"),
])
def test_zero(iv_store, name, hook, grain):
    store = iv_store(name)
    net = model_of(name) or model_for(store)
    n = 3 if grain == "head,pos" else 6
    ex = Examples(store, 0, n)
    ours = ablate(store, hook, grain, method="zero", examples=n, model=model_of(name))
    ref = reference(net, ex, hook, grain, lambda eid, layer: None)
    print(f"zero {name} {hook} {grain}: max diff {check(ours, ref):.2e}")


@pytest.mark.parametrize(("name", "hook", "over", "grain"), [
    ("addition", "pattern", "pos", "head"), ("addition", "pattern", "role", "head,pos"),
])
def test_mean_of_stored_patterns(iv_store, name, hook, over, grain):
    store = iv_store(name)
    assert store.hook_info(act_name(hook, 0)).positions == "all"
    net = model_for(store)
    n = 3 if grain == "head,pos" else 5
    ours = ablate(store, hook, grain, method="mean", mean_over=over, examples=n)
    ref = reference(net, Examples(store, 0, n), hook, grain, stored_means(store, hook, over))
    print(f"mean({over}) {name} {hook} {grain}: max diff {check(ours, ref):.2e}")


@pytest.mark.parametrize(("name", "over", "grain"), [
    ("brackets", "all", "head"), ("brackets", "pos", "head,pos"), ("brackets", "role", "head"),
    ("brackets", "label:balanced", "head,pos"), ("ioi", "role", "head"), ("mlp", "label:carry_0", "head"),
])
def test_mean_from_the_stores_activations(iv_store, name, over, grain):
    store = iv_store(name)
    assert store.hook_info(act_name("z", 0)).positions == "all"  # z is stored: the means come from the store
    net = model_of(name) or model_for(store)
    n = 3 if grain == "head,pos" else 5
    ours = ablate(store, "z", grain, method="mean", mean_over=over, examples=n, model=model_of(name))
    ref = reference(net, Examples(store, 0, n), "z", grain, stored_means(store, "z", over))
    print(f"mean({over}) {name} z {grain}: max diff {check(ours, ref):.2e}")


@pytest.mark.parametrize(("name", "hook", "over", "grain"), [
    ("brackets", "q", "pos", "head"), ("ioi", "k", "role", "head"), ("mlp", "resid_mid", "pos", "layer,pos"),
    # 25 s at load 12: means from the model stay by default in the three above, head,pos in test_zero
    pytest.param("mlp", "q", "all", "head,pos", marks=pytest.mark.slow),
])
def test_mean_from_the_model_when_the_hook_is_not_stored(iv_store, name, hook, over, grain):
    store = iv_store(name)
    assert act_name(hook, 0) not in store.hooks
    net = model_of(name) or model_for(store)
    n = 5
    ours = ablate(store, hook, grain, method="mean", mean_over=over, examples=n, model=model_of(name))
    ref = reference(net, Examples(store, 0, n), hook, grain, model_means(store, net, hook, over))
    print(f"mean({over}) {name} {hook} {grain} (from the model): max diff {check(ours, ref):.2e}")


@pytest.mark.parametrize(("name", "hook", "grain", "start", "stop", "seed"), [
    ("brackets", "z", "head", 0, 16, 0), ("brackets", "z", "head,pos", 2, 9, 3), ("addition", "z", "head", 0, 8, 1),
    ("mlp", "resid_pre", "layer,pos", 4, 10, 0), ("ioi", "v", "head", 0, 12, 2),
])
def test_resample_takes_another_example_of_the_same_length(iv_store, name, hook, grain, start, stop, seed):
    store = iv_store(name)
    net = model_of(name) or model_for(store)
    ex = Examples(store, start, stop)
    src = derangement(ex.lengths, seed)  # which example of the sweep each one takes its activation from
    assert sorted(src.tolist()) == list(range(len(ex)))
    for i, j in enumerate(src):
        assert ex.lengths[j] == ex.lengths[i]
        assert j != i or (ex.lengths == ex.lengths[i]).sum() == 1
    assert (src != np.arange(len(ex))).any()
    caches = {int(ex.ids[i]): cache_of(net, torch.tensor(ex.clean_list[src[i]])[None]) for i in range(len(ex))}
    ours = ablate(store, hook, grain, method="resample", seed=seed, examples=(start, stop), model=model_of(name))
    ref = reference(net, ex, hook, grain, lambda eid, layer: caches[eid][act_name(hook, layer)])
    print(f"resample {name} {hook} {grain} seed {seed}: max diff {check(ours, ref):.2e}")

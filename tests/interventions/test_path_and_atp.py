"""Path patching and attribution patching against references written here.

Path patching (the IOI recipe), with full TransformerLens runs of each example alone:
pass 1 runs the base example with every head's z frozen to the base run's except the sender's,
which takes the source run's, MLPs recomputing; with receivers 'logits' its metric is the answer,
else it captures the receivers' input (q, k or v). Pass 2 is the base run with only the receivers'
inputs replaced by the captured ones.

Attribution patching: the base metric plus grad x (source - base) summed over each target's slice,
with the gradient taken by torch autograd on a TransformerLens run here.
"""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch
from iv_helpers import (
    Examples, act_name, cache_of, compare, hooked_metrics, metrics_of, model_of, ref_frame, rows_of,
)

from actstore.interventions import attribution_patch, patch, path_patch
from actstore.interventions.model import model_for
from actstore.query.interventions import agreement


def path_reference(net, ex: Examples, receivers: list[tuple[int, int]] | None, receiver_input: str | None,
                   mode: str) -> pl.DataFrame:
    n_layers, n_heads = net.cfg.n_layers, net.cfg.n_heads
    sender_layers = range(n_layers) if receivers is None else range(max(r for r, _ in receivers))
    rows = []
    for i in range(len(ex)):
        one = ex.one(i)
        clean, corrupted = torch.tensor(one.clean_list), torch.tensor(one.corrupted_list)
        base, source = (corrupted, clean) if mode == "denoise" else (clean, corrupted)
        base_cache, source_cache = cache_of(net, base), cache_of(net, source)
        for layer in sender_layers:
            for head in range(n_heads):
                def freeze(z, hook, at: int, layer=layer, head=head):
                    z[...] = base_cache[act_name("z", at)]
                    if at == layer:
                        z[:, :, head] = source_cache[act_name("z", at)][:, :, head]
                    return z

                hooks = [(act_name("z", at), lambda z, hook, at=at: freeze(z, hook, at)) for at in range(n_layers)]
                if receivers is None:
                    values = hooked_metrics(net, base, one, hooks)
                else:
                    captured = {}

                    def capture(x, hook):
                        captured[hook.name] = x.detach().clone()

                    names = sorted({act_name(receiver_input, r) for r, _ in receivers})
                    hooked_metrics(net, base, one, hooks + [(name, capture) for name in names])

                    def put(x, hook):
                        for r, h in receivers:
                            if hook.name == act_name(receiver_input, r):
                                x[:, :, h] = captured[hook.name][:, :, h]
                        return x

                    values = hooked_metrics(net, base, one, [(name, put) for name in names])
                rows += rows_of(values, one, layer, head, None)
    return ref_frame(rows)


@pytest.mark.parametrize(("name", "receivers", "receiver_input", "mode", "n"), [
    ("mlp", "logits", None, "noise", 6),
    ("mlp", "1.0,1.1", "q", "noise", 6),
    ("mlp", "1.1", "v", "denoise", 6),
    ("addition", "logits", None, "denoise", 6),
    ("addition", "1.0,1.2", "k", "noise", 6),
    ("ioi", "2.1,2.3", "q", "noise", 4),       # prompts of different lengths, 3 layers: receivers see 2 sender layers
    ("ioi", "1.0,2.2", "v", "noise", 4),       # receivers in two layers
])
def test_path_patching_equals_the_two_pass_reference(iv_store, name, receivers, receiver_input, mode, n):
    store = iv_store(name)
    net = model_of(name) or model_for(store)
    ours = path_patch(store, receivers, receiver_input or "q", mode=mode, examples=n, model=model_of(name))
    recv = None if receivers == "logits" else [tuple(int(x) for x in r.split(".")) for r in receivers.split(",")]
    ref = path_reference(net, Examples(store, 0, n), recv, receiver_input, mode)
    diff = compare(ours, ref)
    assert diff <= 1e-4 * max(1.0, float(ref["ref"].abs().max())), diff
    base_col = "clean" if mode == "noise" else "corrupted"
    assert float((ours["value"] - ours[base_col]).abs().max()) > 1e-2  # some path matters
    print(f"path_patch {name} -> {receivers} ({receiver_input}, {mode}): max diff {diff:.2e}")


def test_path_patching_to_logits_differs_from_patching_the_head(iv_store):
    """With receivers 'logits' later heads are frozen: not the same as patching the sender's z."""
    store = iv_store("mlp")
    net = model_of("mlp")
    path = path_patch(store, "logits", mode="noise", examples=6, model=net)
    full = patch(store, "z", "head", mode="noise", examples=6, model=net)
    keys = ["layer", "head", "example_id", "answer_idx", "metric"]
    both = path.join(full, on=keys, suffix="_full")
    last = net.cfg.n_layers - 1  # in the last layer no head comes after the sender: the two agree
    d_last = (both.filter(pl.col("layer") == last)["value"] - both.filter(pl.col("layer") == last)["value_full"]).abs()
    d_first = (both.filter(pl.col("layer") == 0)["value"] - both.filter(pl.col("layer") == 0)["value_full"]).abs()
    assert float(d_last.max()) < 1e-4 and float(d_first.max()) > 1e-3


HEAD_HOOKS = ("z", "q", "k", "v", "pattern")


def atp_reference(net, ex: Examples, hook: str, grain: str, mode: str) -> pl.DataFrame:
    rows = []
    per_head = hook in HEAD_HOOKS
    for i in range(len(ex)):
        one = ex.one(i)
        clean, corrupted = torch.tensor(one.clean_list), torch.tensor(one.corrupted_list)
        base, source = (corrupted, clean) if mode == "denoise" else (clean, corrupted)
        source_cache = cache_of(net, source)
        layers = list(range(net.cfg.n_layers))
        est = {}
        for layer in layers:  # one run per layer: only that layer's activation is a leaf to differentiate by
            leaf: list[torch.Tensor] = []

            def grab(x, hook, leaf=leaf):
                leaf.append(x.detach().clone().requires_grad_(True))
                return leaf[0]

            with torch.enable_grad():
                logits = net.run_with_hooks(base, fwd_hooks=[(act_name(hook, layer), grab)])
                metrics = metrics_of(logits, one)  # [1, answer, metric]
                for a in range(metrics.shape[1]):
                    for m in range(metrics.shape[2]):
                        (g,) = torch.autograd.grad(metrics[0, a, m], leaf, retain_graph=True)
                        d = g * (source_cache[act_name(hook, layer)] - leaf[0].detach())  # [1, ...]
                        if hook == "pattern":
                            d = d.movedim(2, 1)  # [1, q, head, k]: token-major
                        d = d[0]
                        # per-position (and per-head) contribution: [pos, head] or [pos]
                        est[(layer, a, m)] = d.flatten(2).sum(-1) if per_head else d.flatten(1).sum(-1)
        base_metrics = metrics.detach()
        for layer in layers:
            heads = range(net.cfg.n_heads) if per_head else [None]
            for head in heads:
                positions = range(int(one.lengths[0])) if grain.endswith(",pos") else [None]
                for p in positions:
                    vals = torch.zeros_like(base_metrics)
                    for a in range(vals.shape[1]):
                        for m in range(vals.shape[2]):
                            c = est[(layer, a, m)]
                            c = c if head is None else c[:, head]
                            vals[0, a, m] = base_metrics[0, a, m] + (c.sum() if p is None else c[p])
                    rows += rows_of(vals, one, layer, head, p)
    return ref_frame(rows)


@pytest.mark.parametrize(("name", "hook", "grain", "mode"), [
    ("addition", "z", "head", "denoise"), ("addition", "pattern", "head,pos", "noise"),
    ("mlp", "resid_pre", "layer,pos", "denoise"), ("mlp", "mlp_out", "layer", "noise"),
    ("mlp", "k", "head,pos", "noise"),
    ("ioi", "v", "head", "denoise"), ("brackets", "resid_mid", "layer,pos", "denoise"),
])
def test_attribution_patching_is_grad_times_difference(iv_store, name, hook, grain, mode):
    store = iv_store(name)
    net = model_of(name) or model_for(store)
    n = 5
    ours = attribution_patch(store, hook, grain, mode=mode, examples=n, model=model_of(name))
    ref = atp_reference(net, Examples(store, 0, n), hook, grain, mode)
    diff = compare(ours, ref)
    assert diff <= 1e-4 * max(1.0, float(ref["ref"].abs().max())), diff
    base_col = "corrupted" if mode == "denoise" else "clean"
    assert float((ours["value"] - ours[base_col]).abs().max()) > 1e-3
    print(f"atp {name} {hook} {grain} {mode}: max diff {diff:.2e}")


def test_agreement_of_attribution_with_exact_patching(iv_store):
    store = iv_store("addition")
    n = 24
    exact = patch(store, "z", "head", examples=n)
    atp = attribution_patch(store, "z", "head", examples=n)
    got = agreement(atp, exact)
    assert got["n_targets"] == store.arch.n_layers * store.arch.n_heads
    assert got["metric"] == "logit_diff"
    rho = got["spearman"]
    assert isinstance(rho, float) and math.isfinite(rho) and -1.0 <= rho <= 1.0
    # by hand: ranks of the per-head mean logit_diff
    per = [t.filter(pl.col("metric") == "logit_diff").group_by("layer", "head").agg(pl.col("value").mean())
           .sort("layer", "head")["value"] for t in (atp, exact)]
    by_hand = pl.DataFrame({"a": per[0].rank(), "b": per[1].rank()}).select(pl.corr("a", "b")).item()
    assert abs(by_hand - rho) < 1e-12
    print(f"agreement (addition zoo, z by head, {n} examples): spearman {rho:.3f}, pearson {got['pearson']:.3f}")
    assert rho > 0  # measured: attribution ranks the heads as exact patching does, roughly

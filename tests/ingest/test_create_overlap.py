"""A new store created beside the first chunk's forward, with hook shapes from the config (run._Creation,
probe.config_shapes): the same bytes as the probe-first, create-first path (background=False), a wrong
config shape falls back to the probe, and an ingest that fails before its first batch is checked leaves
no store behind."""

from __future__ import annotations

import pytest
import torch

import actstore
from actstore.errors import InvalidParameterError
from actstore.ingest.probe import config_shapes
from tests.helpers import tree_bytes
from tests.ingest.tiny_models import tiny_model

HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.mlp.hook_post", "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_z",
         "blocks.0.ln1.hook_scale", "blocks.1.hook_resid_post"]
KW = dict(chunk=16, batch=8, quiet=True, hooks=HOOKS, outputs=False)


def leftovers(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("outputs", [False, True])
def test_overlapped_creation_writes_the_same_bytes(tmp_path, outputs):
    model = tiny_model("addition")
    kw = {**KW, "outputs": outputs}
    st: dict[str, float] = {}
    actstore.ingest("addition", model, 40, 0, tmp_path / "overlap", stats=st, **kw)
    actstore.ingest("addition", model, 40, 0, tmp_path / "plain", background=False, **kw)
    assert st["probe_s"] < 0.05 and st["create_s"] > 0 and st["create_wait_s"] >= 0
    assert tree_bytes(tmp_path / "overlap") == tree_bytes(tmp_path / "plain")
    assert leftovers(tmp_path) == []


def test_config_shapes_are_the_probed_shapes():
    for kind in ("addition", "list_update", "attn_only_ln", "brackets"):
        model = tiny_model(kind)
        names = [h for h in model.hook_dict if not h.endswith(("hook_tokens", "hook_rot_q", "hook_rot_k"))]
        derived = config_shapes(model, names, 7)
        if derived is None:
            continue
        got = {}
        hooks = [(h, lambda a, hook: got.__setitem__(hook.name, tuple(a.shape[1:]))) for h in derived]
        with torch.inference_mode():
            model.run_with_hooks(torch.zeros((1, 7), dtype=torch.long), fwd_hooks=hooks, return_type=None)
        assert {h: derived[h] for h in got} == got, kind  # every hook that fires has its derived shape


def test_a_wrong_config_shape_falls_back_to_the_probe(tmp_path):
    model = tiny_model("addition")
    plain = tmp_path / "plain"
    actstore.ingest("addition", model, 40, 0, plain, background=False, **KW)
    model.cfg.d_mlp = 65  # the config now says another MLP width than the weights have: the first batch sees 64
    try:
        st: dict[str, float] = {}
        actstore.ingest("addition", model, 40, 0, tmp_path / "fallback", stats=st, **KW)
        model.cfg.d_mlp = 64
        assert st["probe_s"] > 0
    finally:
        model.cfg.d_mlp = 64
    fallback = actstore.open_store(tmp_path / "fallback")
    hook = fallback.manifest.hook("blocks.1.mlp.hook_post")
    assert hook is not None and hook.shape == (40, fallback.manifest.width, 64)
    # the same activations and records as the probe-first store, apart from the recorded config
    a, b = tree_bytes(plain), tree_bytes(tmp_path / "fallback")
    assert set(a) == set(b)
    assert {k for k in a if a[k] != b[k]} <= {"zarr.json", "_commits/store.json", "_commits/complete.json"} | {
        k for k in a if k.startswith("_commits/")}
    assert all(a[k] == b[k] for k in a if k.startswith(("acts/", "meta/")) and not k.endswith("zarr.json"))
    assert leftovers(tmp_path) == []


def test_a_hook_that_never_fires_is_refused_as_before(tmp_path):
    model = tiny_model("attn_only_ln")  # TransformerLens keeps an ln2 that never runs in an attention-only model
    with pytest.raises(InvalidParameterError, match="blocks.0.ln2.hook_scale.*did not fire"):
        actstore.ingest("addition", model, 16, 0, tmp_path / "s", hooks=["blocks.0.ln2.hook_scale"], quiet=True,
                        outputs=False)
    assert not (tmp_path / "s").exists() and leftovers(tmp_path) == []


def test_a_failure_before_the_first_batch_is_checked_leaves_no_store(tmp_path):
    model = tiny_model("addition")

    def boom(*_):
        raise RuntimeError("boom in the first forward")

    handle = model.blocks[0].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            actstore.ingest("addition", model, 40, 0, tmp_path / "s", **KW)
    finally:
        handle.remove()
    assert not (tmp_path / "s").exists() and leftovers(tmp_path) == []
    actstore.ingest("addition", model, 40, 0, tmp_path / "s", **KW)  # then a rerun creates it whole
    actstore.ingest("addition", model, 40, 0, tmp_path / "plain", background=False, **KW)
    assert tree_bytes(tmp_path / "s") == tree_bytes(tmp_path / "plain")


def test_overwrite_and_resume_go_through(tmp_path):
    model = tiny_model("addition")
    out = tmp_path / "s"
    actstore.ingest("addition", model, 40, 0, out, **KW)
    before = tree_bytes(out)
    st: dict[str, float] = {}
    actstore.ingest("addition", model, 40, 0, out, stats=st, **KW)  # resumed: nothing to do, nothing changed
    assert st["examples"] == 0 and tree_bytes(out) == before
    actstore.ingest("addition", model, 40, 1, out, overwrite=True, **KW)  # another seed replaces it
    assert actstore.open_store(out).manifest.seed == 1 and leftovers(tmp_path) == []

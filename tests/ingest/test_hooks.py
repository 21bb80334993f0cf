"""Hook selection: defaults, short forms, position suffixes, unknown names."""

from __future__ import annotations

import pytest

from actstore.errors import InvalidParameterError, UnknownHookError
from actstore.ingest.hooks import answer_dims, default_hooks, hook_dims, resolve_hooks

NAMES = [  # a 2-layer model with LayerNorm and MLPs, in TransformerLens module order
    "hook_embed", "hook_pos_embed",
    *[f"blocks.{i}.{h}" for i in range(2) for h in (
        "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z",
        "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_result", "hook_attn_out", "hook_resid_pre",
        "hook_resid_mid", "ln2.hook_scale", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")],
    "ln_final.hook_scale", "ln_final.hook_normalized",
]


def names(choices):
    return [(c.name, c.positions) for c in choices]


def test_default_set_is_enough_for_direct_attribution():
    assert default_hooks(NAMES) == [
        f"blocks.{i}.{h}" for i in range(2)
        for h in ("ln1.hook_scale", "attn.hook_z", "attn.hook_pattern", "ln2.hook_scale", "mlp.hook_post")
    ] + ["ln_final.hook_scale"]
    assert [c.name for c in resolve_hooks(None, NAMES, "all")] == default_hooks(NAMES)


def test_short_forms_suffixes_and_model_order():
    got = names(resolve_hooks(["resid_post", "z:answer", "blocks.0.attn.hook_pattern", "scale"], NAMES, "all"))
    assert got == [
        ("blocks.0.ln1.hook_scale", "all"), ("blocks.0.attn.hook_z", "answer"), ("blocks.0.attn.hook_pattern", "all"),
        ("blocks.0.ln2.hook_scale", "all"), ("blocks.0.hook_resid_post", "all"),
        ("blocks.1.ln1.hook_scale", "all"), ("blocks.1.attn.hook_z", "answer"),
        ("blocks.1.ln2.hook_scale", "all"), ("blocks.1.hook_resid_post", "all"), ("ln_final.hook_scale", "all"),
    ]


def test_global_answer_positions_spare_the_layernorm_scales():
    got = dict(names(resolve_hooks(["default", "blocks.1.mlp.hook_post:all"], NAMES, "answer")))
    assert got["blocks.0.attn.hook_z"] == "answer" and got["blocks.0.mlp.hook_post"] == "answer"
    assert got["blocks.1.mlp.hook_post"] == "all"
    assert got["ln_final.hook_scale"] == "all" and got["blocks.1.ln2.hook_scale"] == "all"
    assert dict(names(resolve_hooks(["ln_final.hook_scale:answer"], NAMES, "all"))) == {"ln_final.hook_scale": "all"}


def test_unknown_hooks_name_the_closest_valid_ones():
    with pytest.raises(UnknownHookError, match=r"'blocks\.0\.attn\.hook_zz'.*closest valid: blocks\.0\.attn\.hook_z"):
        resolve_hooks(["blocks.0.attn.hook_zz"], NAMES, "all")
    with pytest.raises(UnknownHookError, match="hook_post"):
        resolve_hooks(["posts"], NAMES, "all")
    with pytest.raises(UnknownHookError, match="blocks.7.attn.hook_z"):
        resolve_hooks(["blocks.7.attn.hook_z"], NAMES, "all")
    with pytest.raises(InvalidParameterError, match="positions must be one of"):
        resolve_hooks(None, NAMES, "last")
    with pytest.raises(InvalidParameterError, match="no hooks selected"):
        resolve_hooks([], NAMES, "all")


def test_axis_names():
    assert hook_dims("blocks.0.attn.hook_z", 4) == ("example", "pos", "head", "d_head")
    assert hook_dims("blocks.0.attn.hook_pattern", 4) == ("example", "head", "query_pos", "key_pos")
    assert hook_dims("blocks.0.mlp.hook_post", 3) == ("example", "pos", "d_mlp")
    assert hook_dims("ln_final.hook_scale", 3) == ("example", "pos", "one")
    assert hook_dims("blocks.1.hook_resid_post", 3) == ("example", "pos", "d_model")
    assert hook_dims("blocks.1.hook_resid_post", 4) == ("example", "pos", "dim2", "dim3")  # unexpected shape
    assert answer_dims(("example", "head", "query_pos", "key_pos")) == ("example", "head", "answer", "key_pos")
    assert answer_dims(("example", "pos", "d_mlp")) == ("example", "answer", "d_mlp")

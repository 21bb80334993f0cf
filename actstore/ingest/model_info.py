"""What the manifest records about a model: its spec, config fields, processing and weights.

Uses `actstore.models` (the zoo) when it provides the helpers, else reads the config directly.
"""

from __future__ import annotations

import hashlib

from typing import Any

import numpy as np

from actstore.errors import InvalidParameterError, UnknownModelError

# the TransformerLens config fields a store records (the read API's `store.config`)
CONFIG_FIELDS = ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "attn_only", "normalization_type",
                 "positional_embedding_type", "d_vocab", "d_vocab_out", "n_ctx", "act_fn", "attention_dir",
                 "model_name", "gated_mlp", "parallel_attn_mlp", "n_key_value_heads", "original_architecture",
                 "default_prepend_bos", "tokenizer_name")


def load(model: Any, model_spec: str | None) -> tuple[Any, str]:
    """(HookedTransformer, spec label) from a spec string or a model object."""
    if isinstance(model, str):
        try:
            from actstore.models import load_model
        except ImportError:
            raise UnknownModelError(f"cannot load model {model!r}: the model zoo (actstore.models) is not "
                                    "available; pass a HookedTransformer to actstore.ingest") from None
        return load_model(model), model_spec or model
    if not hasattr(model, "cfg") or not hasattr(model, "hook_dict"):
        raise InvalidParameterError(f"model must be a spec string or a HookedTransformer, got {type(model).__name__}")
    return model, model_spec or str(getattr(model.cfg, "model_name", None) or "custom")


def config_dict(model: Any) -> dict[str, Any]:
    """JSON-ready config fields (d_mlp is None for attention-only models)."""
    try:
        from actstore.models import config_dict as zoo_config_dict  # type: ignore[attr-defined]
    except ImportError:
        zoo_config_dict = None
    cfg = model.cfg
    out = {k: _plain(getattr(cfg, k, None)) for k in CONFIG_FIELDS}
    if zoo_config_dict is not None:
        out.update({k: _plain(v) for k, v in zoo_config_dict(model).items()})
    if out.get("attn_only"):
        out["d_mlp"] = None
    return out


def processing_dict(model: Any, processing: dict[str, Any] | None) -> dict[str, Any]:
    """The weight processing applied: given, from the zoo, or inferred as far as the weights tell."""
    if processing is not None:
        return {str(k): _plain(v) for k, v in processing.items()}
    try:
        from actstore.models import describe_processing  # type: ignore[attr-defined]
    except ImportError:
        describe_processing = None
    if describe_processing is not None:
        return {str(k): _plain(v) for k, v in describe_processing(model).items()}
    cfg = model.cfg
    w_o = model.blocks[0].attn.W_O.detach().float()
    return {
        "fold_ln": cfg.normalization_type in ("LNPre", "RMSPre"),
        "center_writing_weights": bool(w_o.mean(-1).abs().max() < 1e-5),
        "center_unembed": bool(model.unembed.W_U.detach().float().mean(-1).abs().max() < 1e-5),
        "inferred": True,
    }


def params_dict(model: Any) -> dict[str, np.ndarray]:
    """{state-dict name: float32 array} of the model's parameters (not its buffers)."""
    return {name: p.detach().float().cpu().numpy() for name, p in model.named_parameters()}


def weights_digest(model: Any) -> str:
    """sha256 of the model's parameters (names and float32 values, in name order).

    Part of a store's identity: the same spec with other weights (retrained, processed
    differently) is another run, never resumed into the same store.
    """
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(np.ascontiguousarray(p.detach().float().cpu().numpy()).tobytes())
    return h.hexdigest()


def _plain(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if hasattr(v, "item") and not isinstance(v, (list, tuple, dict)):
        try:
            return v.item()
        except (TypeError, ValueError):
            pass
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)

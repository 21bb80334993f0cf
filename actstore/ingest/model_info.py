"""What the manifest records about a model: its spec, config fields, processing and weights."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from actstore.errors import InvalidParameterError
from actstore.models import load_model, model_config_dict, processing_of
from actstore.store.integrity import weights_sha256

# the TransformerLens config fields a store records (the read API's `store.config`)
CONFIG_FIELDS = ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "attn_only", "normalization_type",
                 "positional_embedding_type", "d_vocab", "d_vocab_out", "n_ctx", "act_fn", "attention_dir",
                 "model_name", "gated_mlp", "parallel_attn_mlp", "n_key_value_heads", "original_architecture",
                 "default_prepend_bos", "tokenizer_name")


def load(model: Any, model_spec: str | None) -> tuple[Any, str]:
    """(HookedTransformer, spec label) from a spec string or a model object."""
    if isinstance(model, str):
        return load_model(model), model_spec or model
    if not hasattr(model, "cfg") or not hasattr(model, "hook_dict"):
        raise InvalidParameterError(f"model must be a spec string or a HookedTransformer, got {type(model).__name__}")
    return model, model_spec or str(getattr(model.cfg, "model_name", None) or "custom")


def config_dict(model: Any) -> dict[str, Any]:
    """JSON-ready config fields (d_mlp is None for attention-only models)."""
    cfg = model.cfg
    out = {k: _plain(getattr(cfg, k, None)) for k in CONFIG_FIELDS}
    out.update({k: _plain(v) for k, v in model_config_dict(model).items()})
    if out.get("attn_only"):
        out["d_mlp"] = None
    return out


def processing_dict(model: Any, processing: dict[str, Any] | None) -> dict[str, Any]:
    """The weight processing applied: as given, else as load_model recorded it or the weights tell."""
    return {str(k): _plain(v) for k, v in (processing if processing is not None else processing_of(model)).items()}


def params_dict(model: Any) -> dict[str, np.ndarray]:
    """{state-dict name: float32 array} of the model's parameters (not its buffers)."""
    return {name: p.detach().float().cpu().numpy() for name, p in model.named_parameters()}


SAMPLE_STRIDE = 61  # prime, so the sample does not follow a row or head of any common width
_PRIMES = (61, 127, 251, 509, 761, 1021)  # the sample strides: primes, none a factor of a common width


def _stride(shape: tuple[int, ...]) -> int:
    """The sample stride of a parameter of this shape: SAMPLE_STRIDE, or for a matrix whose last two
    dimensions are both longer, the largest of _PRIMES no longer than either, so every row (last dimension)
    and head still holds a sampled value, in a tenth of the memory reads on an embedding or MLP matrix (the
    sample's pass over the weights was most of a kept digest's check: 0.1-0.3 s for a GPT-2-small shape)."""
    width = min(shape[-2:]) if len(shape) >= 2 else 0
    return max([SAMPLE_STRIDE] + [q for q in _PRIMES if q <= width])
# model -> (parameter state key, digest): one hash per model object while its weights stay as they are
_DIGESTS: "weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], str]]" = weakref.WeakKeyDictionary()


def weights_digest(model: Any) -> str:
    """sha256 of the model's parameters (names and float32 values, in name order).

    Part of a store's identity: the same spec with other weights (retrained, processed
    differently) is another run, never resumed into the same store. Computed once per model
    object and kept while every parameter is the same tensor (storage, shape, dtype, device) at
    the same torch version counter, which any in-place edit (`p.add_(...)`, `p[...] = x`,
    `load_state_dict`) advances, and with the same sum over every k-th value (k: `_stride`, a prime
    of at least SAMPLE_STRIDE and at most its rows' length; an edit through `p.data` bypasses the
    counter; the sample catches any that changes a row or a head).
    `forget_weights_digest(model)` drops it.
    """
    named = sorted(model.named_parameters(), key=lambda kv: kv[0])
    with torch.no_grad():
        key = tuple((name, p.data_ptr(), p._version, tuple(p.shape), p.dtype, p.device,
                     float(p.detach().reshape(-1)[::_stride(tuple(p.shape))].sum(dtype=torch.float64)))
                    for name, p in named)
    try:
        cached = _DIGESTS.get(model)
    except TypeError:  # not weak-referenceable: never cached
        cached = None
    if cached is not None and cached[0] == key:
        return cached[1]
    digest = weights_sha256((name, p.detach().float().cpu().numpy()) for name, p in named)
    try:
        _DIGESTS[model] = (key, digest)
    except TypeError:
        pass
    return digest


def has_weights_digest(model: Any) -> bool:
    """Whether a weights digest of this model object is kept (weights_digest then only checks its key)."""
    try:
        return model in _DIGESTS
    except TypeError:
        return False


def weights_digest_later(model: Any, then: Callable[[str], Any] | None = None) -> Callable[[], str]:
    """Start `weights_digest(model)` on its own thread and return the call that waits for it (and raises what
    it raised). sha256 drops the GIL, so a first hash (~0.5 s for a GPT-2-small shape on this CPU) runs
    beside the caller's work: ingest's first batch and probe, which keeps one CPU thread for itself.
    `then(digest)` runs on the same thread after it (its result and errors are the caller's to collect; not
    waited for here)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actstore-weights-digest")
    future = pool.submit(weights_digest, model)
    if then is not None:
        pool.submit(lambda: then(future.result()))
    pool.shutdown(wait=False)  # the thread ends once its work is done
    return future.result


def forget_weights_digest(model: Any) -> None:
    """Drop the cached weights digest of `model` (after editing its weights through `p.data`)."""
    try:
        _DIGESTS.pop(model, None)
    except TypeError:
        pass


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

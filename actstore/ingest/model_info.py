"""What the manifest records about a model: its spec, config fields, processing and weights."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import xxhash

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


def processing_dict(model: Any, processing: dict[str, Any] | None, weights: str | None = None) -> dict[str, Any]:
    """The weight processing applied: as given, else as load_model recorded it or the weights tell. `weights`: the
    model's weights digest just checked (weights_digest); what the weights told is kept per model object for
    those weights (reading it off them costs ~20 ms for a GPT-2-small shape: means over W_U)."""
    if processing is not None:
        return {str(k): _plain(v) for k, v in processing.items()}
    key = (weights, getattr(model.cfg, "normalization_type", None), repr(getattr(model, "actstore_processing", None)))
    try:
        cached = _PROCESSING.get(model)
    except TypeError:  # not weak-referenceable: never cached
        cached = None
    if weights is not None and cached is not None and cached[0] == key:
        return dict(cached[1])
    out = {str(k): _plain(v) for k, v in processing_of(model).items()}
    if weights is not None:
        with contextlib.suppress(TypeError):
            _PROCESSING[model] = (key, dict(out))
    return out


def params_dict(model: Any) -> dict[str, np.ndarray]:
    """{state-dict name: float32 array} of the model's parameters (not its buffers)."""
    return {name: p.detach().float().cpu().numpy() for name, p in model.named_parameters()}


def _content_check(p: torch.Tensor) -> Any:
    """A check of every value of `p`, cheap enough to run at every ingest: the 64-bit XXH3 of its bytes on the CPU
    (about 22 GB/s here, with the GIL released: 29 ms for a GPT-2-small shape, against 63 ms for their crc32c,
    which held the GIL from the forward pass beside it, and 0.5 s for their sha256); on another device,
    where reading the bytes would copy them to the host, its sum and its position-weighted sum in float64,
    computed there. An edit through `p.data`, which leaves the version counter as it was, changes it."""
    t = p.detach().reshape(-1)
    if t.device.type == "cpu":
        return xxhash.xxh3_64_intdigest(t.contiguous().view(torch.uint8).numpy().data)
    x = t.double()
    return float(x.sum()), float((x * torch.arange(1, x.numel() + 1, device=x.device, dtype=torch.float64)).sum())


# model -> (parameter state key, digest): one hash per model object while its weights stay as they are
_DIGESTS: "weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], str]]" = weakref.WeakKeyDictionary()
# model -> ((weights digest, normalization type, load_model's record), processing read off the weights)
_PROCESSING: "weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], dict[str, Any]]]" = weakref.WeakKeyDictionary()


def weights_digest(model: Any) -> str:
    """sha256 of the model's parameters (names and float32 values, in name order).

    Part of a store's identity: the same spec with other weights (retrained, processed
    differently) is another run, never resumed into the same store. Computed once per model
    object and kept while every parameter is the same tensor (storage, shape, dtype, device) at
    the same torch version counter, which any in-place edit (`p.add_(...)`, `p[...] = x`,
    `load_state_dict`) advances, and with the same `_content_check` of all its values (an edit
    through `p.data` bypasses the counter; the check sees an edit of any value, short of a
    64-bit hash collision).
    `forget_weights_digest(model)` drops it.
    """
    named = sorted(model.named_parameters(), key=lambda kv: kv[0])
    with torch.no_grad():
        key = tuple((name, p.data_ptr(), p._version, tuple(p.shape), p.dtype, p.device,
                     _content_check(p))
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

"""The one place that builds and processes TransformerLens models.

Everything else in actstore.models goes through these functions, so a TransformerBridge
backend (TransformerLens 4) can be added here later without touching loading, training or
evaluation. TransformerLens 3.9 warns DeprecationWarning when a HookedTransformer is built and
when `transformer_lens.utils` is imported; those warnings are silenced here, where we build
models, not globally.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from actstore.errors import InvalidParameterError

# DeprecationWarnings TransformerLens 3.9 emits on construction / import (TransformerBridge hints)
_TL_DEPRECATIONS = (
    r"HookedTransformer is deprecated.*",
    r"HookedTransformerConfig is deprecated.*",
    r"The 'utils' module has been deprecated.*",
    r".*TransformerBridge.*",
)

# Config fields the zoo JSON needs to rebuild a model exactly (everything else is TL's default)
ZOO_CONFIG_FIELDS = (
    "n_layers", "n_heads", "d_model", "d_head", "d_mlp", "d_vocab", "d_vocab_out", "n_ctx", "act_fn",
    "attn_only", "normalization_type", "positional_embedding_type", "attention_dir", "eps", "seed",
    "model_name", "default_prepend_bos", "tokenizer_prepends_bos",
)  # fmt: skip


@contextlib.contextmanager
def quiet_transformer_lens() -> Iterator[None]:
    """Silence TransformerLens's own deprecation warnings inside the block (only those)."""
    with warnings.catch_warnings():
        for pattern in _TL_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=pattern, category=DeprecationWarning)
        yield


def tl() -> Any:
    """The transformer_lens module, imported quietly."""
    with quiet_transformer_lens():
        import transformer_lens

    return transformer_lens


def build_model(config: dict[str, Any], device: str = "cpu", dtype: torch.dtype = torch.float32,
                tokenizer: Any = None) -> Any:
    """A freshly initialised HookedTransformer from config fields (seeded by config['seed'])."""
    lens = tl()
    with quiet_transformer_lens():
        cfg = lens.HookedTransformerConfig(**config, device=device, dtype=dtype)
        return lens.HookedTransformer(cfg, tokenizer=tokenizer)


def resolve_device(device: str | torch.device) -> str:
    """'auto', 'cpu', 'cuda' or 'cuda:N' checked against this machine: 'auto' picks CUDA when there is
    one; anything else, or CUDA where there is none, is an InvalidParameterError."""
    text = str(device)
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = text.partition(":")
    if text == "cpu" or (kind == "cuda" and (not index or index.isdigit())):
        if kind == "cuda" and not torch.cuda.is_available():
            raise InvalidParameterError(f"device {text} requested but this machine has no CUDA device; "
                                        "use --device cpu")
        if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
            raise InvalidParameterError(f"device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return text
    raise InvalidParameterError(f"device must be auto, cpu, cuda or cuda:N, got {text!r}")


def place(model: Any, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """Move a (processed, float32) model to `device` and `dtype`, keeping its config in step."""
    if str(device) == str(model.cfg.device) and dtype == model.cfg.dtype:
        return model
    # HookedTransformer.to takes one device-or-dtype argument at a time
    if str(device) != str(model.cfg.device):
        model = model.to(device)
    if dtype != model.cfg.dtype:
        model = model.to(dtype)
    model.cfg.device, model.cfg.dtype = str(device), dtype
    return model


def processing_flags(model: Any) -> dict[str, bool]:
    """The processing the seeds apply, restricted to what the architecture has.

    fold_ln and center_writing_weights need LayerNorm (without it they would change the
    outputs); center_unembed and fold_value_biases never change log-probs.
    """
    has_ln = model.cfg.normalization_type in ("LN", "LNPre")
    return {
        "fold_ln": has_ln and model.cfg.normalization_type == "LN",
        "center_writing_weights": has_ln,
        "center_unembed": True,
        "fold_value_biases": True,
        "refactor_factored_attn_matrices": False,
    }


def load_weights(model: Any, state_dict: dict[str, torch.Tensor], process: bool = True) -> dict[str, Any]:
    """Load a raw (unprocessed) TransformerLens state dict into `model`, processed as the seeds do.

    Returns the processing record (also kept on the model for `processing_of`).
    """
    if process:
        flags = processing_flags(model)
        if flags["fold_ln"]:
            state_dict = fold_square_mlp_ln(state_dict, model.cfg)
        with quiet_transformer_lens():
            model.load_and_process_state_dict(dict(state_dict), **flags)
    else:
        flags = {k: False for k in processing_flags(model)}
        model.load_state_dict(state_dict, strict=False)
    record = {**flags, "processed": bool(process)}
    model.actstore_processing = record
    return record


def fold_square_mlp_ln(state_dict: dict[str, torch.Tensor], cfg: Any) -> dict[str, torch.Tensor]:
    """Fold each ln2 into its MLP's W_in / b_in ourselves when W_in is square (d_mlp == d_model).

    TransformerLens 3.9's fold_ln guesses W_in's orientation from its shape and, for a square
    W_in [d_model, d_mlp], scales the wrong axis by ln2.w and folds ln2.b along the wrong one:
    the processed model's outputs change (by up to 2 nats on zoo:brackets, d_mlp = d_model = 56).
    Folded here, ln2 becomes the identity (w = 1, b = 0), which TransformerLens's fold leaves
    exact; its W_in centering (along d_model for a square matrix) is right.
    """
    if cfg.attn_only or cfg.d_mlp != cfg.d_model or cfg.normalization_type != "LN":
        return state_dict
    out = dict(state_dict)
    for layer in range(cfg.n_layers):
        w_key, b_key = f"blocks.{layer}.ln2.w", f"blocks.{layer}.ln2.b"
        if w_key not in out:
            continue
        w_in = out[f"blocks.{layer}.mlp.W_in"]  # [d_model, d_mlp]
        out[f"blocks.{layer}.mlp.b_in"] = out[f"blocks.{layer}.mlp.b_in"] + out[b_key] @ w_in
        out[f"blocks.{layer}.mlp.W_in"] = out[w_key][:, None] * w_in
        out[w_key], out[b_key] = torch.ones_like(out[w_key]), torch.zeros_like(out[b_key])
    return out


def processing_of(model: Any) -> dict[str, Any]:
    """The weight processing applied to `model` (recorded by load_model, else read off the weights)."""
    record = getattr(model, "actstore_processing", None)
    if record is not None:
        return dict(record)
    cfg = model.cfg
    w_o = model.blocks[0].attn.W_O.detach().float()
    w_u = model.unembed.W_U.detach().float()
    return {
        "fold_ln": cfg.normalization_type in ("LNPre", "RMSPre"),
        "center_writing_weights": bool(w_o.mean(-1).abs().max() < 1e-5),
        "center_unembed": bool(w_u.mean(-1).abs().max() < 1e-5),
        "fold_value_biases": bool(model.blocks[0].attn.b_V.detach().abs().max() == 0),
        "refactor_factored_attn_matrices": False,
        "processed": None,
        "inferred": True,
    }


def model_config_dict(model: Any) -> dict[str, Any]:
    """Every TransformerLens config field as a JSON value (device and dtype as strings)."""
    out: dict[str, Any] = {}
    for key, value in model.cfg.to_dict().items():
        if isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        elif hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):
            value = value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) for v in value):
            out[key] = list(value)
    return out


def raw_config(model: Any) -> dict[str, Any]:
    """The config fields a zoo JSON records (of an unprocessed model)."""
    full = model_config_dict(model)
    out = {k: full.get(k) for k in ZOO_CONFIG_FIELDS}
    if out["attn_only"]:
        out.pop("d_mlp")
    return out

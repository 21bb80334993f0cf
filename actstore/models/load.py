"""`load_model(spec)`: a processed HookedTransformer from a zoo name, a pretrained name or a path.

Specs, tried in this order:
- `zoo:NAME`: a model trained here, weights shipped in actstore/models/zoo/;
- a path: a local Hugging Face GPT-2 checkpoint directory (`config.json` inside), or the
  output directory of `actstore train` (one zoo record `NAME.json` + `NAME.safetensors`), or
  a zoo `.safetensors` file next to its `.json`;
- a TransformerLens pretrained name (`gpt2-small`, ...), only where its weights are in the local
  Hugging Face cache: the lookup runs with the hub offline and fails at once otherwise.
Weights are processed as the seeds do (see backend.processing_flags); `processing_of(model)`
says what was applied.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from actstore.errors import ModelUnavailableError, UnknownModelError
from actstore.models.backend import build_model, load_weights, place, quiet_transformer_lens, resolve_device, tl
from actstore.models.checkpoint import is_hf_checkpoint, load_gpt2_checkpoint
from actstore.models.hub import hub_offline, is_cached
from actstore.models.zoo import FORMAT_VERSION, read_record, tokenizer_fingerprint, tokenizer_for, zoo_names, zoo_spec
from actstore.outputs import is_utf8


def load_model(spec: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
               process: bool = True) -> Any:
    """The HookedTransformer named by `spec` (see the module docstring), on `device` in `dtype`."""
    device = resolve_device(device)
    if isinstance(spec, Path) or (isinstance(spec, str) and spec and _exists(spec)):
        if not is_utf8(spec):
            raise UnknownModelError(f"model path {str(spec)!r} is not valid UTF-8 (safetensors cannot read it); "
                                    "rename it")
        return _load_path(Path(spec), device, dtype, process)
    if not isinstance(spec, str) or not spec:
        raise UnknownModelError(f"model spec must be a non-empty string or path, got {spec!r}")
    if spec.startswith("zoo:"):
        return load_zoo(spec.removeprefix("zoo:"), device=device, dtype=dtype, process=process)
    official = _official_name(spec)
    if official is None and (spec.startswith((".", "~")) or Path(spec).is_absolute()):
        raise UnknownModelError(f"model path {spec!r} does not exist")
    if official is None:
        raise UnknownModelError(
            f"unknown model {spec!r}: not a zoo model ({', '.join('zoo:' + n for n in zoo_names())}), "
            "not an existing checkpoint directory and not a TransformerLens pretrained name"
        )
    return _load_pretrained(spec, official, device, dtype, process)


def _exists(spec: str) -> bool:
    """Whether path `spec` exists; a path the OS refuses (too long, ...) is an UnknownModelError."""
    try:
        return Path(spec).exists()
    except OSError as e:
        raise UnknownModelError(f"model path {spec!r}: {e.strerror or e}") from None


def load_zoo(name: str, directory: Path | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32,
             process: bool = True) -> Any:
    """Zoo model `name` from `directory` (default: the shipped weights)."""
    spec = zoo_spec(name)
    record = read_record(name, directory)
    weights = Path(directory or Path(__file__).parent / "zoo") / f"{name}.safetensors"
    return _from_record(spec.name, record, weights, device, dtype, process)


def _from_record(name: str, record: dict[str, Any], weights: Path, device: str, dtype: torch.dtype,
                 process: bool) -> Any:
    from safetensors.torch import load_file

    spec = zoo_spec(name)
    tokenizer = tokenizer_for(spec)
    if tokenizer is not None:
        have, want = tokenizer_fingerprint(tokenizer), record.get("tokenizer")
        if have != want:
            raise ModelUnavailableError(
                f"zoo:{name}: the tokenizer built by this actstore ({have}) differs from the one {weights.name} was "
                f"trained with ({want}); retrain with `actstore train {name} --install`"
            )
    model = build_model(record["config"], device="cpu", tokenizer=tokenizer)
    load_weights(model, load_file(str(weights)), process=process)
    return place(model, device, dtype)


def _load_path(path: Path, device: str, dtype: torch.dtype, process: bool) -> Any:
    if is_hf_checkpoint(path):
        return load_gpt2_checkpoint(path, device=device, dtype=dtype, process=process)
    record_path = _zoo_record_in(path)
    if record_path is None:
        raise UnknownModelError(
            f"model path {str(path)!r} is neither a Hugging Face GPT-2 checkpoint directory (config.json) nor "
            "an `actstore train` output (NAME.json + NAME.safetensors)"
        )
    record = json.loads(record_path.read_text())
    weights = record_path.with_suffix(".safetensors")
    if not weights.is_file():
        raise ModelUnavailableError(f"zoo record {str(record_path)!r} has no weights file {weights.name} beside it")
    return _from_record(record["name"], record, weights, device, dtype, process)


def _zoo_record_in(path: Path) -> Path | None:
    """The zoo record JSON a path names (a .json/.safetensors file, or a directory holding one)."""
    if path.is_file() and path.suffix in (".json", ".safetensors"):
        candidates = [path.with_suffix(".json")]
    elif path.is_dir():
        candidates = sorted(path.glob("*.json"))
    else:
        return None
    for candidate in candidates:
        try:
            record = json.loads(candidate.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and record.get("format_version") == FORMAT_VERSION and "config" in record:
            return candidate
    return None


def _official_name(name: str) -> str | None:
    """TransformerLens's official name for a pretrained model name or alias, or None."""
    with quiet_transformer_lens():
        from transformer_lens.loading_from_pretrained import get_official_model_name
    tl()
    try:
        return get_official_model_name(name)
    except ValueError:
        return None


def _load_pretrained(name: str, official: str, device: str, dtype: torch.dtype, process: bool) -> Any:
    """A TransformerLens pretrained model from the local Hugging Face cache only."""
    if not is_cached(official):
        raise ModelUnavailableError(
            f"{name!r} ({official}): weights are not in the local Hugging Face cache and actstore does not "
            "download; put them in the cache (HF_HOME), or pass a local checkpoint directory (a GPT-2 "
            "model saved with save_pretrained) as the model"
        )
    flags = dict(fold_ln=process, center_writing_weights=process, center_unembed=process,
                 fold_value_biases=process)
    with hub_offline(), quiet_transformer_lens():
        try:
            model = tl().HookedTransformer.from_pretrained(official, device=device, dtype=dtype, **flags)
        except (OSError, ValueError) as e:
            raise ModelUnavailableError(
                f"{name!r} ({official}): cannot load from the local Hugging Face cache ({str(e).splitlines()[0]}); "
                "pass a local checkpoint directory instead"
            ) from None
    norm = model.cfg.normalization_type
    model.actstore_processing = {
        "fold_ln": process and norm in ("LNPre", "RMSPre"),
        "center_writing_weights": process and norm in ("LN", "LNPre"),
        "center_unembed": process,
        "fold_value_biases": process,
        "refactor_factored_attn_matrices": False,
        "processed": process,
    }
    return model

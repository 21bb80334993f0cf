"""The store's model, reloaded from its manifest and refused unless its weights are the ones ingested."""

from __future__ import annotations

from typing import Any

import torch

from actstore.errors import InvalidParameterError, ModelMismatchError
from actstore.ingest import model_info
from actstore.models.backend import resolve_device
from actstore.store.reader import Store


def model_for(store: Store, model: Any = None, device: str = "auto") -> Any:
    """The HookedTransformer of `store` (its manifest's model spec, or `model`: a spec or a model
    object), in float32 on `device`, gradients off. ModelMismatchError unless the sha256 of its
    weights equals the manifest's `weights_sha256`."""
    spec = store.manifest.model_spec if model is None else model
    if isinstance(spec, str):
        from actstore.models import load_model  # noqa: PLC0415 (loading TransformerLens is slow; only here)

        net = load_model(spec, device=resolve_device(device))
    else:
        net, _ = model_info.load(spec, None)
        if device != "auto":
            net.to(resolve_device(device))
    got = model_info.weights_digest(net)
    if got != store.manifest.weights_sha256:
        where = f"model {spec!r}" if isinstance(spec, str) else "the given model"
        raise ModelMismatchError(
            f"{where} has other weights than store {store.path} was ingested with (sha256 {got[:12]} vs "
            f"{str(store.manifest.weights_sha256)[:12]}); pass the ingest's model with --model")
    if next(net.parameters()).dtype != torch.float32:
        raise InvalidParameterError(f"interventions run in float32; this model is {next(net.parameters()).dtype}")
    net.eval()
    net.requires_grad_(False)
    return net

"""The model zoo and model loading: the only part of actstore (with ingest) that imports TransformerLens.

- `load_model(spec)`: a processed HookedTransformer from `zoo:NAME`, a local GPT-2 checkpoint
  directory, an `actstore train` output, or a TransformerLens pretrained name (cached only).
- `processing_of(model)`, `model_config_dict(model)`: what a store's manifest records.
- `evaluate(model, task, n, seed)`: accuracy on fresh examples, overall and by label.
- `train(name)`: rebuild a zoo model's weights (`actstore train NAME`).
"""

from __future__ import annotations

from actstore.errors import require_models

require_models("actstore.models")  # a reader-only install: one error naming the extra, not 'No module torch'

from actstore.models.backend import model_config_dict, processing_of  # noqa: E402
from actstore.models.evaluate import evaluate  # noqa: E402
from actstore.models.load import load_model  # noqa: E402
from actstore.models.zoo import TRAIN_SEED_BASE, ZOO, zoo_names  # noqa: E402


def train(name: str, **kwargs):  # noqa: ANN201 - see actstore.models.train.train
    """Train zoo model `name` (see actstore.models.train.train for the options)."""
    from actstore.models.train import train as _train

    return _train(name, **kwargs)


__all__ = ["TRAIN_SEED_BASE", "ZOO", "evaluate", "load_model", "model_config_dict", "processing_of", "train",
           "zoo_names"]

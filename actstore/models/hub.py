"""The Hugging Face hub, kept offline while actstore loads a model.

With no network, `from_pretrained` retries for tens of seconds before failing; in offline
mode it answers from the local cache at once or fails at once. huggingface_hub reads
HF_HUB_OFFLINE when it is imported, so the switch sets both the variable and the constant.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Hugging Face hub offline mode inside the block (restored afterwards)."""
    from huggingface_hub import constants

    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    saved_const = constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_const
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def is_cached(repo_id: str, filename: str = "config.json") -> bool:
    """Whether `filename` of hub repo `repo_id` is in the local Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id=repo_id, filename=filename), str)

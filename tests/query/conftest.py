"""Stores for the query tests, ingested once per session from tiny random models (query_models.py).

`tiny_store(kind, dtype)` returns an open store of 40 examples in chunks of 16 (three chunks,
the last partial) with every default hook at all positions, plus resid_post; kinds are the
keys of query_models.SHAPES.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from query_models import SHAPES, tiny_model

N_EXAMPLES, CHUNK = 40, 16


def hooks_of(model) -> list[str]:  # type: ignore[no-untyped-def]
    """The default hooks and resid_post (an attention-only model's ln2 hook never fires: not asked for)."""
    from actstore.ingest.hooks import default_hooks

    names = default_hooks(list(model.hook_dict))
    if model.cfg.attn_only:
        names = [n for n in names if ".ln2." not in n]
    return [*names, "resid_post"]


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Callable[..., object]:
    import actstore

    made: dict[tuple[str, str], Path] = {}

    def make(kind: str, dtype: str = "float32"):
        key = (kind, dtype)
        if key not in made:
            task = SHAPES[kind][0]
            path = tmp_path_factory.mktemp(f"{kind}-{dtype}") / "store"
            model = tiny_model(kind)
            actstore.ingest(task, model, N_EXAMPLES, 3, path, hooks=hooks_of(model),
                            dtype=dtype, chunk=CHUNK, batch=8, quiet=True,
                            task_params={"max_len": 40} if task == "brackets" else None)
            made[key] = path
        return actstore.open_store(made[key])

    return make

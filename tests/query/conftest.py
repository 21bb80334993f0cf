"""Stores for the query tests, ingested once per session from tiny random models (query_models.py).

`tiny_store(kind, dtype)` returns an open store of 40 examples in chunks of 16 (three chunks,
the last partial) with every default hook at all positions, plus resid_post; kinds are the
keys of query_models.SHAPES. `tiny_store(kind, counter=False)` (addition kinds): the same
examples without counterfactual tokens (tests/no_counter.py), for the refusals of 'diff'.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from no_counter import no_counter_task
from query_models import CHUNK, N_EXAMPLES, SHAPES, tiny_model



@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Callable[..., object]:
    import actstore

    made: dict[tuple[str, str, bool], Path] = {}

    def make(kind: str, dtype: str = "float32", counter: bool = True):
        key = (kind, dtype, counter)
        if key not in made:
            task = SHAPES[kind][0]
            path = tmp_path_factory.mktemp(f"{kind}-{dtype}{'' if counter else '-nocounter'}") / "store"
            with no_counter_task() as without:
                if not counter:
                    assert task == "addition", "counter=False is made for addition stores"
                    task = without
                actstore.ingest(task, tiny_model(kind), N_EXAMPLES, 3, path, hooks=["default", "resid_post"],
                                dtype=dtype, chunk=CHUNK, batch=8, quiet=True,
                                task_params={"max_len": 40} if task == "brackets" else None)
            made[key] = path
        return actstore.open_store(made[key])

    return make

"""A synthetic store written through the writer (no model): known values, 3 chunks of 4 examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from actstore.store.layout import DEFAULT_CODEC
from actstore.store.manifest import HookInfo, Manifest
from actstore.store.writer import ChunkWriter, create_store

N, CHUNK, WIDTH, N_ANSWERS = 10, 4, 5, 2


def synthetic_manifest(**changes) -> Manifest:
    fields = dict(
        model_spec="synthetic", model_config={"n_layers": 1, "n_heads": 2, "d_model": 6, "d_head": 3, "d_mlp": None,
                                              "attn_only": True, "normalization_type": None, "d_vocab": 3,
                                              "n_ctx": WIDTH},
        processing={}, model_dtype="float32", task="addition", task_params={"digits": 1}, seed=0, n=N,
        n_answers=N_ANSWERS, width=WIDTH,
        hooks=(HookInfo("blocks.0.attn.hook_z", "all", ("example", "pos", "head", "d_head"), (N, WIDTH, 2, 3),
                        "float16"),
               HookInfo("blocks.0.attn.hook_pattern", "answer", ("example", "head", "answer", "key_pos"),
                        (N, 2, N_ANSWERS, WIDTH), "float16")),
        dtype="float16", chunk=CHUNK, batch=2, codec=dict(DEFAULT_CODEC), decomposition={"status": "skipped"},
        package_version="test")
    fields.update(changes)
    return Manifest(**fields)


def synthetic_values() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"blocks.0.attn.hook_z": rng.normal(size=(N, WIDTH, 2, 3)).astype(np.float16),
            "blocks.0.attn.hook_pattern": rng.random(size=(N, 2, N_ANSWERS, WIDTH)).astype(np.float16)}


def synthetic_meta(start: int, stop: int) -> dict[str, pl.DataFrame]:
    ids = list(range(start, stop))
    examples = pl.DataFrame({
        "example_id": ids, "split": ["all"] * len(ids), "text": [f"ex{i}" for i in ids],
        "tokens": [[i % 3] * WIDTH for i in ids], "length": [WIDTH] * len(ids),
        "answer_positions": [[3, 4]] * len(ids), "answer_tokens": [[1, 2]] * len(ids),
        "counter_tokens": pl.Series([None] * len(ids), dtype=pl.List(pl.Int64)), "label": [i % 2 == 0 for i in ids]})
    tokens = pl.DataFrame({"example_id": [i for i in ids for _ in range(WIDTH)], "pos": list(range(WIDTH)) * len(ids),
                           "token_id": [i % 3 for i in ids for _ in range(WIDTH)],
                           "str_token": ["t"] * (WIDTH * len(ids)), "role": [None, "a", "b", None, "c"] * len(ids)})
    outputs = pl.DataFrame({"example_id": [i for i in ids for _ in range(N_ANSWERS)],
                            "answer_idx": [0, 1] * len(ids), "answer_pos": [3, 4] * len(ids),
                            "correct_token": [1, 2] * len(ids),
                            "correct_logit": [float(i) for i in ids for _ in range(2)]})
    return {"examples": examples, "tokens": tokens, "outputs": outputs}


def write_synthetic(path: Path, chunks: int | None = None) -> Path:
    """A store with `chunks` of its 3 chunks committed (all by default)."""
    m = synthetic_manifest()
    params = {"embed.W_E": np.arange(18, dtype=np.float32).reshape(3, 6), "blocks.0.attn.W_O": np.ones((2, 3, 6))}
    create_store(path, m, params)
    w = ChunkWriter(path, m)
    values = synthetic_values()
    for k, start in enumerate(range(0, N, CHUNK)[: chunks if chunks is not None else 3]):
        stop = min(start + CHUNK, N)
        w.write_chunk(k, {h: v[start:stop] for h, v in values.items()}, synthetic_meta(start, stop))
    return path

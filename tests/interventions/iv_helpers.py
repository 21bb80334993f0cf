"""Shared helpers of the intervention tests: tiny models built here, the metrics computed by hand
from full logits, and TransformerLens's own patching functions with per-example values recorded.

Nothing here calls actstore.interventions: these are the references the sweeps are checked against.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

METRICS = ("logit_diff", "correct_logit", "logprob", "loss")
KEYS = ["layer", "head", "pos", "example_id", "answer_idx", "metric"]

SHAPES = {
    # addition-shaped with MLPs and LayerNorm (the addition zoo is attention-only)
    "ln_mlp": dict(n_layers=2, n_heads=2, d_model=32, d_head=16, d_mlp=48, n_ctx=16, d_vocab=12, act_fn="gelu",
                   normalization_type="LN"),
}

# the stores of conftest.py -- name: (task, model, examples, task params)
STORES = {
    "mlp": ("addition", "tiny", 24, None),               # LayerNorm + MLPs (in-test model)
    "addition": ("addition", "zoo:addition", 24, None),   # attention-only, LayerNorm
    "list_update": ("list_update", "zoo:list_update", 16, None),  # no LayerNorm, shortformer positions
    "brackets": ("brackets", "zoo:brackets", 16, {"max_len": 12}),  # bidirectional, right-padded
    "ioi": ("ioi", "zoo:lm", 24, None),                   # prompts of different lengths, roles S1/IO/S2/END
}


def model_of(name: str) -> HookedTransformer | None:
    """The model to pass as `model=` for store `name` (None: its manifest names a zoo model)."""
    return tiny_model() if STORES[name][1] == "tiny" else None


def tiny_model(kind: str = "ln_mlp", seed: int = 0) -> HookedTransformer:
    """A random model with non-zero biases and LayerNorm weights, processed as the zoo is."""
    cfg = HookedTransformerConfig(**SHAPES[kind], seed=seed, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                p.normal_(0, 0.2, generator=gen)
            if name.endswith(".w") and ".ln" in name or name.startswith("ln_final.w"):
                p.uniform_(0.5, 1.5, generator=gen)
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    model.eval()
    model.requires_grad_(False)
    return model


class Examples:
    """Examples [start, stop) of a store as tensors (unpadded only when all have one length)."""

    def __init__(self, store: Any, start: int, stop: int) -> None:
        ex = store.examples.filter(pl.col("example_id").is_between(start, stop - 1)).sort("example_id")
        self.ids = ex["example_id"].to_numpy()
        self.lengths = ex["length"].to_numpy()
        self.clean_list = [list(t) for t in ex["tokens"].to_list()]
        self.corrupted_list = [list(t) for t in ex["corrupted_tokens"].to_list()]
        self.answer_pos = torch.tensor(np.stack(ex["answer_positions"].to_list()))
        self.answer = torch.tensor(np.stack(ex["answer_tokens"].to_list()))
        # no counterfactual token (a task without one): logit_diff is then 0 here, and undefined in a sweep
        has_counter = ex["counter_tokens"].null_count() == 0
        self.counter = torch.tensor(np.stack(ex["counter_tokens"].to_list())) if has_counter else self.answer
        self.frame = ex

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def equal_length(self) -> bool:
        return len(set(self.lengths.tolist())) == 1

    @property
    def clean(self) -> torch.Tensor:
        assert self.equal_length
        return torch.tensor(self.clean_list)

    @property
    def corrupted(self) -> torch.Tensor:
        assert self.equal_length
        return torch.tensor(self.corrupted_list)

    def one(self, i: int) -> "Examples":
        """Example i alone (a batch of one, no padding)."""
        out = object.__new__(Examples)
        out.ids, out.lengths = self.ids[i:i + 1], self.lengths[i:i + 1]
        out.clean_list, out.corrupted_list = self.clean_list[i:i + 1], self.corrupted_list[i:i + 1]
        out.answer_pos, out.answer, out.counter = self.answer_pos[i:i + 1], self.answer[i:i + 1], self.counter[i:i + 1]
        out.frame = self.frame[i:i + 1]
        return out


def metrics_of(logits: torch.Tensor, ex: Examples) -> torch.Tensor:
    """Full logits [B, pos, vocab] -> [B, answer, metric] (METRICS order), by hand."""
    b = logits.shape[0]
    at = logits.float()[torch.arange(b)[:, None], ex.answer_pos]  # [B, answer, vocab]
    correct = at.gather(-1, ex.answer[..., None])[..., 0]
    counter = at.gather(-1, ex.counter[..., None])[..., 0]
    logprob = at.log_softmax(-1).gather(-1, ex.answer[..., None])[..., 0]
    return torch.stack([correct - counter, correct, logprob, -logprob], dim=-1)


def rows_of(values: torch.Tensor, ex: Examples, layer: int, head: int | None, pos: int | None) -> list[dict]:
    """[B, answer, metric] of one target -> table rows keyed like a sweep's."""
    out = []
    v = values.detach().numpy()
    for b in range(v.shape[0]):
        for a in range(v.shape[1]):
            for m, name in enumerate(METRICS):
                out.append({"layer": layer, "head": head, "pos": pos, "example_id": int(ex.ids[b]), "answer_idx": a,
                            "metric": name, "ref": float(v[b, a, m])})
    return out


def ref_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"layer": pl.Int64, "head": pl.Int64, "pos": pl.Int64, "example_id": pl.Int64,
                                      "answer_idx": pl.Int64, "metric": pl.String, "ref": pl.Float64})


def compare(ours: pl.DataFrame, ref: pl.DataFrame, column: str = "value") -> float:
    """Max |ours[column] - ref| over matching keys; asserts both have exactly the same keys."""
    assert ours.height == ref.height, (ours.height, ref.height)
    assert ours.select(KEYS).unique().height == ours.height
    joined = ours.join(ref, on=KEYS, how="inner", nulls_equal=True)
    assert joined.height == ours.height, f"{ours.height - joined.height} rows without a reference"
    return float((joined[column].cast(pl.Float64) - joined["ref"]).abs().max())


_AXES = {"layer": "layer", "pos": "pos", "dest_pos": "pos", "head_index": "head", "head": "head"}


def tl_patch(fn: Callable[..., Any], net: HookedTransformer, base: torch.Tensor, source: torch.Tensor,
             ex: Examples) -> tuple[pl.DataFrame, pl.DataFrame]:
    """TransformerLens's patching function `fn` run on `base` tokens with the cache of `source` tokens.

    Its metric records every example's values (all answers, all METRICS) as a side effect and
    returns the mean logit_diff of answer 0, which TransformerLens stores. Returns (per-example
    reference rows, TransformerLens's own output as rows with column 'tl')."""
    _, cache = net.run_with_cache(source)
    recorded: list[torch.Tensor] = []

    def metric(logits: torch.Tensor) -> torch.Tensor:
        m = metrics_of(logits, ex)
        recorded.append(m)
        return m[:, 0, 0].mean()

    with torch.no_grad():
        out, index_df = fn(net, base, cache, metric, return_index_df=True)
    rows, means = [], []
    for i, (_, row) in enumerate(index_df.iterrows()):
        key = {"layer": None, "head": None, "pos": None}
        for col, v in row.items():
            key[_AXES[col]] = int(v)
        rows += rows_of(recorded[i], ex, key["layer"], key["head"], key["pos"])
        means.append({**key, "tl": float(out[tuple(int(v) for v in row.to_list())])})
    return ref_frame(rows), pl.DataFrame(means, schema={"layer": pl.Int64, "head": pl.Int64, "pos": pl.Int64,
                                                        "tl": pl.Float64})


def hooked_metrics(net: HookedTransformer, tokens: torch.Tensor, ex: Examples,
                   hooks: list[tuple[str, Callable[..., Any]]]) -> torch.Tensor:
    """[B, answer, metric] of a full TransformerLens run of `tokens` with `hooks`."""
    with torch.no_grad():
        return metrics_of(net.run_with_hooks(tokens, fwd_hooks=hooks), ex)


def act_name(hook: str, layer: int) -> str:
    return f"blocks.{layer}.attn.hook_{hook}" if hook in ("z", "q", "k", "v", "pattern") \
        else f"blocks.{layer}.hook_{hook}"


def cache_of(net: HookedTransformer, tokens: torch.Tensor) -> Any:
    with torch.no_grad():
        return net.run_with_cache(tokens)[1]

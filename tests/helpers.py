"""Small helpers shared by the test modules (tests/ is on sys.path through tests/conftest.py).

    tree_bytes(root) -> {relative path: bytes}
        every file below `root`, to compare two stores byte for byte (resumes, crashes, refused writes).
    csv_out(capsys, argv) -> polars DataFrame
        runs the CLI, asserts it exits 0, parses what it printed as CSV.
    processed_model(bias_std=0.0, bias_seed=0, **config) -> HookedTransformer
        a random TransformerLens model of that config (biases drawn too where bias_std > 0), processed as the
        zoo is.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import pytest

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file below `root` as {path relative to root: its bytes}, sorted by path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def csv_out(capsys: pytest.CaptureFixture[str], argv: list[str]) -> pl.DataFrame:
    """Run `actstore <argv>`; it must exit 0 (else fail with its stderr); its stdout parsed as CSV."""
    from actstore.cli import main

    assert main(argv) == 0, capsys.readouterr().err
    return pl.read_csv(io.StringIO(capsys.readouterr().out))


def processed_model(bias_std: float = 0.0, bias_seed: int = 0, **config: object) -> HookedTransformer:
    """A random HookedTransformer of `config` (HookedTransformerConfig's fields) on the CPU, processed as the
    zoo is (fold_ln, center_writing_weights, center_unembed); the config's seed fixes its weights. bias_std > 0
    draws every bias b_* from N(0, bias_std) first (one generator seeded bias_seed, in parameter order), so
    that the bias terms of a decomposition matter (TransformerLens starts them at zero)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        model = HookedTransformer(HookedTransformerConfig(**config, device="cpu"))
    if bias_std > 0:
        gen = torch.Generator().manual_seed(bias_seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.split(".")[-1].startswith("b_"):
                    p.normal_(0, bias_std, generator=gen)
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    return model


def wide_model() -> HookedTransformer:
    """A one-layer model with wide matrices (rows of 800 and 1000 values, 1200 tokens, heads of 16): room for
    edits of part of a row, rows far apart, one column, one head's bias."""
    return processed_model(n_layers=1, d_model=800, n_heads=4, d_head=16, d_mlp=1000, d_vocab=1200, n_ctx=32,
                           act_fn="gelu", normalization_type="LN", seed=0)


def sha256_of_weights(model: HookedTransformer) -> str:
    """The weights digest computed afresh (integrity.weights_sha256), never a kept one."""
    from actstore.store.integrity import weights_sha256

    return weights_sha256((n, p.detach().numpy()) for n, p in sorted(model.named_parameters()))

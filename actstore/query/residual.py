"""The residual stream a LayerNorm reads, at chosen positions, rebuilt from a store's hooks.

    ResidualPlan.build(store, ln, layer)    ln 'ln1' (reads resid_pre of `layer`), 'ln2' (resid_mid
                                            of `layer`) or 'ln_final' (the final resid_post)
    plan.full_hooks                         the hooks to stream at every position
    plan.rows(weights, chunk, e, p)         [row, d_model] float64 stream at (example, pos) rows
    plan.output(weights, chunk, e, p, x)    [row, d_model] what the LayerNorm outputs there

Where the store holds that stream itself at every position (blocks.L.hook_resid_pre,
blocks.{L-1}.hook_resid_post, blocks.L.hook_resid_mid, the last blocks.{n-1}.hook_resid_post) it is
read as is. Otherwise it is rebuilt as the sum of its components, exactly as direct attribution
splits it: W_E[token] + W_pos[pos] (standard positions) + each earlier attention layer's
z @ W_O + b_O + each earlier MLP's post @ W_out + b_out, from hook_z and hook_post stored at every
position (the default hooks). The LayerNorm's output is (x - mean x) / scale (RMS: x / scale),
times its weight plus its bias where processing did not fold them, with the stored scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from actstore.errors import InvalidParameterError, UnknownHookError
from actstore.query.chunks import Chunk
from actstore.query.readout import Weights
from actstore.store.arch import Arch
from actstore.store.reader import Store

LNS = ("ln1", "ln2", "ln_final")


@dataclass(frozen=True)
class ResidualPlan:
    """Which stream a LayerNorm reads and how to get it from a store."""

    ln: str
    layer: int | None
    stored: str | None          # a stored hook holding the stream at every position, or None
    scale: str | None           # the LayerNorm's stored scale hook (None without LayerNorm)
    full_hooks: tuple[str, ...]
    needs_tokens: bool

    @property
    def label(self) -> str:
        return "ln_final" if self.ln == "ln_final" else f"blocks.{self.layer}.{self.ln}"

    @classmethod
    def build(cls, store: Store, ln: str, layer: int | None = None, use_stored: bool = True,
              require_norm: bool = True) -> "ResidualPlan":
        """The plan for LayerNorm `ln` of `layer` (None for ln_final); use_stored=False always rebuilds;
        require_norm=False accepts a model without LayerNorm (its 'output' is the stream itself)."""
        arch = store.arch
        if ln not in LNS:
            raise InvalidParameterError(f"ln must be one of {', '.join(LNS)}, got {ln!r}")
        if ln == "ln_final":
            if layer is not None:
                raise InvalidParameterError("ln_final takes no layer")
            upto, mid = arch.n_layers, False
        else:
            if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < arch.n_layers:
                raise InvalidParameterError(f"{ln} needs a layer in [0, {arch.n_layers}), got {layer!r}")
            if ln == "ln2" and not arch.has_mlp:
                raise InvalidParameterError("ln2 exists only in models with MLPs; this one is attention-only")
            upto, mid = int(layer), ln == "ln2"
        if arch.norm is None and require_norm:
            raise InvalidParameterError("this model has no LayerNorm; a direction passes through unchanged")
        scale = None if arch.norm is None else (
            Arch.final_scale if ln == "ln_final" else Arch.ln_scale(int(layer), ln))  # type: ignore[arg-type]
        stored = _stored_stream(store, upto, mid) if use_stored else None
        if stored is not None:
            hooks: list[str] = [stored]
        else:
            hooks = [Arch.z(i) for i in range(upto + (1 if mid else 0))]
            if arch.has_mlp:
                hooks += [Arch.mlp_post(i) for i in range(upto)]
        full = tuple(dict.fromkeys([*hooks, *([scale] if scale is not None else [])]))
        for name in full:
            if name not in store.hooks:
                raise UnknownHookError(f"rebuilding the stream {ln} reads needs {name!r}, which store {store.path} "
                                       "does not hold; re-ingest with --hooks default")
            if store.hook_info(name).positions != "all":
                raise InvalidParameterError(f"rebuilding the stream {ln} reads needs {name!r} at every position, but "
                                            f"store {store.path} holds it at the answer positions only; re-ingest "
                                            f"with --hooks {name}:all")
        return cls(ln, None if ln == "ln_final" else int(layer), stored, scale,  # type: ignore[arg-type]
                   full, stored is None)

    def rows(self, weights: Weights, chunk: Chunk, e: np.ndarray, p: np.ndarray) -> np.ndarray:
        """[row, d_model] float64: the stream at rows (chunk-local example e, position p)."""
        if self.stored is not None:
            return chunk.full[self.stored][e, p].astype(np.float64)
        assert chunk.tokens is not None
        arch = weights.arch
        x = weights.param(Arch.W_E)[chunk.tokens[e, p]].astype(np.float64)
        if arch.pos_in_resid:
            x += weights.param(Arch.W_pos)[p]
        upto = arch.n_layers if self.ln == "ln_final" else int(self.layer)  # type: ignore[arg-type]
        for layer in range(upto + (1 if self.ln == "ln2" else 0)):
            z = chunk.full[Arch.z(layer)][e, p].astype(np.float64)  # [row, head, d_head]
            w_o = weights.f64(Arch.attn_weight(layer, "W_O"))  # [head, d_head, d_model]
            x += z.reshape(z.shape[0], -1) @ w_o.reshape(-1, w_o.shape[-1])
            b_o = weights.maybe(Arch.attn_weight(layer, "b_O"))
            if b_o is not None:
                x += b_o
            if arch.has_mlp and layer < upto:
                x += chunk.full[Arch.mlp_post(layer)][e, p].astype(np.float64) @ weights.f64(
                    Arch.mlp_weight(layer, "W_out"))
                b_out = weights.maybe(Arch.mlp_weight(layer, "b_out"))
                if b_out is not None:
                    x += b_out
        return x

    def output(self, weights: Weights, chunk: Chunk, e: np.ndarray, p: np.ndarray, x: np.ndarray) -> np.ndarray:
        """[row, d_model]: the LayerNorm's output for inputs x [row, d_model] at rows (e, p) (x itself
        without LayerNorm)."""
        if self.scale is None:
            return x
        s = chunk.full[self.scale][e, p].astype(np.float64).reshape(-1, 1)
        y = (weights.center(x) if weights.arch.layer_norm else x) / s
        w, b = weights.ln_weight(self.layer, self.ln)  # type: ignore[arg-type]
        if w is not None:
            y = y * w
        if b is not None:
            y = y + b
        return y


def _stored_stream(store: Store, upto: int, mid: bool) -> str | None:
    """A stored hook holding the stream before layer `upto` (mid: resid_mid of `upto`) at every position."""
    if mid:
        names = [f"blocks.{upto}.hook_resid_mid"]
    else:
        names = [f"blocks.{upto}.hook_resid_pre"] if upto < store.arch.n_layers else []
        names += [f"blocks.{upto - 1}.hook_resid_post"] if upto > 0 else []
    for name in names:
        if name in store.hooks and store.hook_info(name).positions == "all":
            return name
    return None

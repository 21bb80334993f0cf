"""`Arch`: the architecture facts every query needs, and the names of hooks and weights.

Built once from the manifest's `model_config` (TransformerLens config fields) and exposed as
`store.arch`; nothing else reads the config dict or spells a hook name. Frozen, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from actstore.errors import StoreFormatError

Norm = Literal["LN", "LNPre", "RMS", "RMSPre"]
LAYER_NORMS: tuple[str, ...] = ("LN", "LNPre")
RMS_NORMS: tuple[str, ...] = ("RMS", "RMSPre")
LnName = Literal["ln1", "ln2"]


@dataclass(frozen=True)
class Arch:
    """A transformer's shape as direct attribution sees it.

    d_mlp is None for attention-only models; norm None for models without LayerNorm; causal
    False for bidirectional attention (the brackets classifier); pos_embed is TransformerLens's
    positional_embedding_type ('standard' adds W_pos to the residual; 'shortformer' and
    'rotary' do not).
    """

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int | None
    d_vocab: int
    d_vocab_out: int
    n_ctx: int
    norm: Norm | None
    causal: bool
    pos_embed: str
    act_fn: str | None = None
    eps: float = 1e-5

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "Arch":
        """From TransformerLens config fields (as a manifest records them); StoreFormatError if malformed."""
        try:
            attn_only = bool(cfg.get("attn_only"))
            d_mlp = cfg.get("d_mlp")
            norm = cfg.get("normalization_type")
            if norm not in (None, *LAYER_NORMS, *RMS_NORMS):
                raise ValueError(f"normalization_type {norm!r} is not one of None, "
                                 f"{', '.join(LAYER_NORMS + RMS_NORMS)}")
            d_vocab = _positive(cfg, "d_vocab")
            arch = cls(
                n_layers=_positive(cfg, "n_layers"), n_heads=_positive(cfg, "n_heads"),
                d_model=_positive(cfg, "d_model"), d_head=_positive(cfg, "d_head"),
                d_mlp=None if attn_only or not d_mlp else _positive(cfg, "d_mlp"),
                d_vocab=d_vocab, d_vocab_out=int(cfg.get("d_vocab_out") or d_vocab),
                n_ctx=_positive(cfg, "n_ctx"), norm=norm,
                causal=cfg.get("attention_dir", "causal") != "bidirectional",
                pos_embed=str(cfg.get("positional_embedding_type") or "standard"),
                act_fn=cfg.get("act_fn"), eps=float(cfg.get("eps") or 1e-5))
        except (TypeError, ValueError) as e:
            raise StoreFormatError(f"manifest: model_config is malformed ({e})") from None
        return arch

    # --- facts ------------------------------------------------------------------------------

    @property
    def has_mlp(self) -> bool:
        return self.d_mlp is not None

    @property
    def layer_norm(self) -> bool:
        """LayerNorm (centres, then scales) rather than RMSNorm or none."""
        return self.norm in LAYER_NORMS

    @property
    def pos_in_resid(self) -> bool:
        """Whether W_pos is added to the residual stream ('standard' positions)."""
        return self.pos_embed == "standard"

    @property
    def layers(self) -> range:
        return range(self.n_layers)

    def heads(self) -> list[tuple[int, int]]:
        """Every (layer, head), in order."""
        return [(layer, h) for layer in self.layers for h in range(self.n_heads)]

    # --- hook names -------------------------------------------------------------------------

    @staticmethod
    def z(layer: int) -> str:
        """[example, pos, head, d_head]"""
        return f"blocks.{layer}.attn.hook_z"

    @staticmethod
    def pattern(layer: int) -> str:
        """[example, head, query_pos, key_pos]"""
        return f"blocks.{layer}.attn.hook_pattern"

    @staticmethod
    def attn_scores(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_attn_scores"

    @staticmethod
    def mlp_post(layer: int) -> str:
        """[example, pos, d_mlp]"""
        return f"blocks.{layer}.mlp.hook_post"

    @staticmethod
    def ln_scale(layer: int, ln: LnName = "ln1") -> str:
        """[example, pos, 1]"""
        return f"blocks.{layer}.{ln}.hook_scale"

    final_scale = "ln_final.hook_scale"

    # --- weight names -----------------------------------------------------------------------

    @staticmethod
    def attn_weight(layer: int, name: Literal["W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"]) -> str:
        return f"blocks.{layer}.attn.{name}"

    @staticmethod
    def mlp_weight(layer: int, name: Literal["W_in", "W_out", "b_in", "b_out", "W_gate"]) -> str:
        return f"blocks.{layer}.mlp.{name}"

    @staticmethod
    def ln_weight(layer: int | None, ln: Literal["ln1", "ln2", "ln_final"], name: Literal["w", "b"]) -> str:
        """A LayerNorm's weight or bias (present only where processing did not fold it)."""
        return f"ln_final.{name}" if ln == "ln_final" else f"blocks.{layer}.{ln}.{name}"

    W_E, W_pos, W_U, b_U = "embed.W_E", "pos_embed.W_pos", "unembed.W_U", "unembed.b_U"


def _positive(cfg: Mapping[str, Any], key: str) -> int:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{key} must be a positive integer, got {v!r}")
    return v


__all__ = ["Arch", "LAYER_NORMS", "RMS_NORMS", "Norm"]


def hooks_named(name: str, hook_names: list[str]) -> list[str]:
    """The hooks of `hook_names` that `name` means: itself if present, else for a short form without
    a dot ('z', 'hook_z', 'resid_post') every hook ending in that name, in `hook_names` order; [] if none."""
    if name in hook_names:
        return [name]
    if name and "." not in name:
        short = name if name.startswith("hook_") else f"hook_{name}"
        return [h for h in hook_names if h.endswith(f".{short}") or h == short]
    return []

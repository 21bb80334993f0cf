"""Which hooks an ingest stores, at which positions, with which axis names.

Hook names are TransformerLens names ('blocks.0.attn.hook_z'). Also accepted:
- a short form without dots meaning that hook in every layer: 'z', 'pattern', 'post',
  'resid_post', 'scale' (every LayerNorm scale), 'attn_out', ...;
- 'default': the default set (enough for exact direct attribution);
- a ':all' or ':answer' suffix choosing that hook's positions ('blocks.3.attn.hook_z:answer').
Without a suffix a hook takes the ingest's `positions`. LayerNorm scales are always stored at
all positions (they are tiny and every attribution at any position needs them).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from actstore.errors import InvalidParameterError, UnknownHookError
from actstore.store.arch import hooks_named
from actstore.store.manifest import POSITIONS

# axis names after 'example' by hook-name suffix; the pos-like axis is named 'pos' or 'query_pos'
_DIMS: dict[str, tuple[str, ...]] = {
    "hook_z": ("pos", "head", "d_head"), "hook_q": ("pos", "head", "d_head"),
    "hook_k": ("pos", "head", "d_head"), "hook_v": ("pos", "head", "d_head"),
    "hook_rot_q": ("pos", "head", "d_head"), "hook_rot_k": ("pos", "head", "d_head"),
    "hook_result": ("pos", "head", "d_model"),
    "hook_q_input": ("pos", "head", "d_model"), "hook_k_input": ("pos", "head", "d_model"),
    "hook_v_input": ("pos", "head", "d_model"),
    "hook_pattern": ("head", "query_pos", "key_pos"), "hook_attn_scores": ("head", "query_pos", "key_pos"),
    "hook_pre": ("pos", "d_mlp"), "hook_post": ("pos", "d_mlp"), "hook_pre_linear": ("pos", "d_mlp"),
    "hook_scale": ("pos", "one"),
}
_D_MODEL = ("pos", "d_model")  # resid_*, attn_out, mlp_out, embed, pos_embed, normalized, ...


@dataclass(frozen=True)
class HookChoice:
    """A hook to store and its positions ('all' | 'answer').

    explicit: named in full by the user (an error if it never fires), rather than picked by
    'default' or a short form (then dropped if the model never runs it, e.g. ln2 of an
    attention-only model).
    """

    name: str
    positions: str
    explicit: bool = False


def default_hooks(hook_names: Iterable[str]) -> list[str]:
    """Per-head hook_z, hook_pattern, MLP hook_post and every LayerNorm hook_scale, in model order."""
    return [h for h in hook_names if re.fullmatch(
        r"blocks\.\d+\.(attn\.hook_z|attn\.hook_pattern|mlp\.hook_post|ln\d\.hook_scale)|ln_final\.hook_scale", h)]


def resolve_hooks(requested: Iterable[str] | None, hook_names: list[str], positions: str) -> list[HookChoice]:
    """Expand and check the requested hooks against the model's `hook_names` (in model order).

    Raises UnknownHookError naming the closest valid names for any unknown one.
    """
    if positions not in POSITIONS:
        raise InvalidParameterError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    chosen: dict[str, str] = {}
    explicit: set[str] = set()
    for item in (list(requested) if requested is not None else ["default"]):
        name, sep, pos = str(item).strip().partition(":")
        if sep and pos not in POSITIONS:
            raise InvalidParameterError(f"hook {item!r}: position suffix must be ':all' or ':answer'")
        for hook in _expand(name, hook_names):
            chosen[hook] = pos or chosen.get(hook, positions)
        if name in hook_names:
            explicit.add(name)
    if not chosen:
        raise InvalidParameterError("no hooks selected; pass --hooks NAME ... or leave it out for the defaults")
    order = {h: i for i, h in enumerate(hook_names)}
    return [HookChoice(h, "all" if h.endswith("hook_scale") else chosen[h], h in explicit)
            for h in sorted(chosen, key=order.__getitem__)]


def _expand(name: str, hook_names: list[str]) -> list[str]:
    if name == "default":
        return default_hooks(hook_names)
    found = hooks_named(name, hook_names)
    if found:
        return found
    raise UnknownHookError(_unknown_message(name, hook_names))


def _unknown_message(name: str, hook_names: list[str]) -> str:
    close = difflib.get_close_matches(name, hook_names, n=5, cutoff=0.4)
    if not close:  # a short form typo: compare against the suffixes
        suffixes = sorted({h.rsplit(".", 1)[-1] for h in hook_names})
        close = difflib.get_close_matches(name if name.startswith("hook_") else f"hook_{name}", suffixes, n=5)
    hint = f"closest valid: {', '.join(close)}" if close else f"valid names look like {hook_names[0]}"
    return f"unknown hook {name!r} ({hint}; short forms like 'z' or 'pattern' mean every layer)"


def hook_dims(name: str, ndim: int) -> tuple[str, ...]:
    """Axis names of a hook's stored array, 'example' first (generic 'dimN' where unknown)."""
    suffix = name.rsplit(".", 1)[-1]
    dims = _DIMS.get(suffix, _D_MODEL)
    if len(dims) != ndim - 1:
        dims = ("pos", *(f"dim{i}" for i in range(2, ndim)))
    return ("example", *dims)


def pos_axis(dims: tuple[str, ...]) -> int:
    """The axis that holds query positions: 'query_pos' if present, else 'pos'."""
    return dims.index("query_pos") if "query_pos" in dims else dims.index("pos")


def answer_dims(dims: tuple[str, ...]) -> tuple[str, ...]:
    """Axis names when the pos axis holds only the answer positions."""
    axis = pos_axis(dims)
    return (*dims[:axis], "answer", *dims[axis + 1:])

"""Direct logit attribution of one chunk: the pure math behind `actstore.query.dla`.

At each answer position the final residual stream is a sum of components; with the stored
final LayerNorm scale, each component's share of the answer logit (minus b_U) is
`component . u / scale` (see readout.py). Components at each level:

  layer:  embed, pos_embed, attn{l} (heads + b_O), mlp{l} (neurons + b_out)
  head:   embed, pos_embed, L{l}H{h}, attn_bias{l}, mlp{l}
  neuron: embed, pos_embed, L{l}H{h}, attn_bias{l}, L{l}N{n}, mlp_bias{l}
  path:   as head, but every head of layer >= 1 is split into the earlier components it
          carries: '{source}>L{l}H{h}' (see paths.py)

plus 'ln_final_bias' for a model whose final LayerNorm bias was not folded. Every level
sums exactly to the logit minus b_U (target 'correct') or to the logit difference minus the
b_U difference (target 'diff'). pos_embed appears only where positions are added to the
residual stream ('standard'; a shortformer adds them to queries and keys only).

`target` may also be a readout.Target (e.g. `Target.fixed(row, shape)`: one token or vector of
the Readout at every position); a Readout of vectors read as they are (final_ln=False) gives
component . v, not divided by the final LayerNorm scale, summing to resid_final . v.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from actstore.errors import InvalidParameterError
from actstore.query.chunks import Chunk
from actstore.query.head_dot import answer_positions, head_dot
from actstore.query.paths import path_attribution
from actstore.query.readout import Readout, Target, Weights
from actstore.store.arch import Arch
from actstore.query.options import LEVELS

# dtype of the folded tables and of the answers' values as gathered (float16 / float32 on disk): float32 keeps
# them exact to ~1e-7 relative at half the memory traffic of float64. Head and MLP outputs are float64 sums of
# exact products (head_dot), neuron-level products float32; biases, embeddings and the final scale float64.
COMPUTE = np.float32


@dataclass(frozen=True)
class Component:
    """One term of the decomposition: its name, and the layer / head / neuron / source it belongs to."""

    name: str
    layer: int | None = None
    head: int | None = None
    neuron: int | None = None
    source: str | None = None


def required_hooks(weights: Weights, level: str) -> tuple[list[str], list[str]]:
    """(hooks needed at the answer positions, hooks needed at every position) at granularity `level`."""
    check_level(level)
    n = weights.arch.n_layers
    at_answer = [Arch.z(layer) for layer in range(n)]
    if weights.arch.has_mlp:
        at_answer += [Arch.mlp_post(layer) for layer in range(n)]
    if weights.arch.norm is not None:
        at_answer.append(Arch.final_scale)
    full: list[str] = []
    if level == "path" and n > 1:
        at_answer += [Arch.pattern(layer) for layer in range(1, n)]
        full += [Arch.z(layer) for layer in range(n - 1)]
        if weights.arch.has_mlp:
            full += [Arch.mlp_post(layer) for layer in range(n - 1)]
        if weights.arch.norm is not None:
            full += [Arch.ln_scale(layer, "ln1") for layer in range(1, n)]
    return at_answer, full


def check_level(level: str) -> None:
    if level not in LEVELS:
        raise InvalidParameterError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")


def make_target(readout: Readout, chunk: Chunk, kind: str) -> Target:
    """The Target of a chunk's answers (row indices into `readout`)."""
    counter = None
    if kind == "diff" and chunk.counter_tokens is not None:
        if (chunk.counter_tokens < 0).any():
            bad = int(chunk.example_id[(chunk.counter_tokens < 0).any(axis=1)][0])
            raise InvalidParameterError(
                f"target 'diff': example {bad} has no counterfactual token; use target='correct'")
        counter = readout.rows(chunk.counter_tokens)
    return Target(kind, readout.rows(chunk.answer_tokens), counter)


def mlp_table(readout: Readout, layer: int) -> np.ndarray:
    """[row, 1, d_mlp] the folded MLP table (COMPUTE) as head_dot reads it: one 'head' of width d_mlp (a view of
    compute_table's, kept on the readout, so that Target.take / indexed keep what they make of it)."""
    return readout.table(("compute", "mlp rows", layer), lambda: compute_table(readout, "mlp", layer)[:, None, :])


def compute_table(readout: Readout, kind: str, layer: int) -> np.ndarray:
    """A folded per-token table ('head' | 'mlp') in the COMPUTE dtype, C-contiguous (head_dot reads it so: a
    transposed fold copied per call cost a GPT-2-shaped DLA ~9 ms), kept on the readout."""
    return readout.table(("compute", kind, layer),
                         lambda: np.ascontiguousarray(getattr(readout, kind)(layer), dtype=COMPUTE))


def final_scale(weights: Weights, chunk: Chunk, readout: Readout | None = None) -> np.ndarray:
    """[example, answer] float64 final LayerNorm scale at the answers (ones without LayerNorm, or for a
    readout of vectors read as they are)."""
    if weights.arch.norm is None or (readout is not None and not readout.final_ln):
        return np.ones(chunk.answer_pos.shape)
    return chunk.at_answer[Arch.final_scale][..., 0].astype(np.float64)


def head_values(z: np.ndarray, target: Target, table: np.ndarray) -> np.ndarray:
    """[e, a, head] float64: each head's output at each answer read along `target`: z [e, a, head, d_head]
    (stored activations at the answers) dotted with the folded head table `table` [row, head, d_head]
    (COMPUTE) at each answer's row, exact products summed in one fixed order (query/head_dot.py). Row by
    row: rows [i, j) of the result are those of z[i:j] with the same target rows, bit for bit."""
    rows, index = target.indexed(table)
    return head_dot(z, answer_positions(z), index, rows)


def mlp_values(post: np.ndarray, target: Target, table: np.ndarray) -> np.ndarray:
    """[e, a] float64: each answer's MLP output (without b_out) read along `target`: post [e, a, d_mlp] (MLP
    hook_post at the answers) dotted with the folded MLP table `table` [row, 1, d_mlp] (mlp_table) at each
    answer's row, in head_values' order and precision (one head of width d_mlp)."""
    return head_values(post[:, :, None, :], target, table)[..., 0]


def direct_attribution(weights: Weights, readout: Readout, chunk: Chunk, level: str = "head",
                       target: str | Target = "correct",
                       products: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, list[Component]]:
    """Each component's direct attribution at each answer: ([example, answer, component] float64, components).

    products: hook -> its values toward this target, computed already (e.g. on the reading threads:
    chunks.stream(products=)): a hook_z's head_values [e, a, head], an MLP hook_post's mlp_values [e, a] (not
    for level 'neuron', which reads each neuron); the other hooks' come from chunk.at_answer."""
    check_level(level)
    tgt = target if isinstance(target, Target) else make_target(readout, chunk, target)
    blocks: list[np.ndarray] = []  # each [e, a, k], divided by the final scale at the end
    comps: list[Component] = []

    def add(values: np.ndarray, names: list[Component]) -> None:
        blocks.append(values if values.ndim == 3 else values[..., None])
        comps.extend(names)

    add(tgt.dot(weights.param(Arch.W_E), chunk.input_tokens, readout.u), [Component("embed")])  # [e, a]
    if weights.arch.pos_in_resid:
        add(tgt.dot(weights.param(Arch.W_pos), chunk.answer_pos, readout.u), [Component("pos_embed")])

    n_heads = weights.arch.n_heads
    done = {} if products is None else products
    for layer in range(weights.arch.n_layers):
        if Arch.z(layer) in done:
            per_head = done[Arch.z(layer)]  # [e, a, head]
        else:
            per_head = head_values(chunk.at_answer[Arch.z(layer)], tgt, compute_table(readout, "head", layer))
        attn_bias = tgt.take(readout.attn_bias(layer))  # [e, a]
        if level == "layer":
            add(per_head.sum(-1) + attn_bias, [Component(f"attn{layer}", layer)])
        elif level == "path" and layer > 0:
            values, sources = path_attribution(weights, readout, chunk, tgt, layer)  # [e, a, head, source]
            add(values.reshape(*values.shape[:2], -1),
                [Component(f"{src}>L{layer}H{h}", layer, h, source=src) for h in range(n_heads) for src in sources])
            add(attn_bias, [Component(f"attn_bias{layer}", layer)])
        else:
            add(per_head, [Component(f"L{layer}H{h}", layer, h) for h in range(n_heads)])
            add(attn_bias, [Component(f"attn_bias{layer}", layer)])
        if not weights.arch.has_mlp:
            continue
        mlp_bias = tgt.take(readout.mlp_bias(layer))
        if level == "neuron":
            post = chunk.at_answer[Arch.mlp_post(layer)].astype(COMPUTE, copy=False)  # [e, a, d_mlp]
            per_neuron = (post * tgt.take(compute_table(readout, "mlp", layer))).astype(np.float64)
            add(per_neuron, [Component(f"L{layer}N{n}", layer, neuron=n) for n in range(per_neuron.shape[-1])])
            add(mlp_bias, [Component(f"mlp_bias{layer}", layer)])
            continue
        if Arch.mlp_post(layer) in done:
            per_mlp = done[Arch.mlp_post(layer)]  # [e, a]
        else:
            per_mlp = mlp_values(chunk.at_answer[Arch.mlp_post(layer)], tgt, mlp_table(readout, layer))
        add(per_mlp + mlp_bias, [Component(f"mlp{layer}", layer)])

    final_bias = readout.final_bias()
    k = sum(block.shape[-1] for block in blocks)
    values = np.empty((*blocks[0].shape[:2], k + (final_bias is not None)))
    _divide_into(blocks, final_scale(weights, chunk, readout), values)
    if final_bias is not None:  # an unfolded ln_final.b adds a constant, not divided by the scale
        values[..., k] = tgt.take(final_bias)
        comps.append(Component("ln_final_bias"))
    return values, comps


# _divide_into goes column by column for tables of at least this many rows and at most this many columns (blocks
# at most NARROW wide; wider ones as blocks); for others one concatenate and one divide cost less (GPT-2 shape,
# 512 rows, 170 columns: 0.17 against 0.39 ms; zoo:addition, 16384 rows, 10 columns: 0.48 against 0.25 ms)
COLUMNWISE_ROWS, COLUMNWISE_COLUMNS, NARROW = 1024, 64, 16


def _divide_into(blocks: list[np.ndarray], scale: np.ndarray, values: np.ndarray) -> None:
    """values[..., :k] = concatenate(blocks, -1) / scale[..., None], element for element the same division:
    blocks [e, a, w], scale [e, a], values [e, a, >= k]. For a long table of few columns each block is divided
    straight into its columns, a narrow one column by column: numpy loops over a strided [e, a, w] destination
    w values at a time, which cost more than the division."""
    k = sum(block.shape[-1] for block in blocks)
    if scale.size < COLUMNWISE_ROWS or k > COLUMNWISE_COLUMNS:
        scaled = values[..., :k]
        np.concatenate(blocks, axis=-1, out=scaled)
        np.divide(scaled, scale[..., None], out=scaled)
        return
    off = 0
    for block in blocks:
        w = block.shape[-1]
        if w <= NARROW:
            for j in range(w):
                np.divide(block[..., j], scale, out=values[..., off + j])
        else:
            np.divide(block, scale[..., None], out=values[..., off:off + w])
        off += w


def expected_total(weights: Weights, chunk: Chunk, logits: dict[str, Any], target: str) -> np.ndarray:
    """What the components must sum to: correct_logit - b_U[correct] (or the difference): [example, answer].

    logits: {'correct_logit': [e, a], 'counter_logit': [e, a] (for 'diff')}
    """
    b_u = weights.maybe(Arch.b_U)
    b_u = np.zeros(int(weights.param(Arch.W_U).shape[1])) if b_u is None else b_u
    total = np.asarray(logits["correct_logit"], dtype=np.float64) - b_u[chunk.answer_tokens]
    if target == "diff":
        total = total - (np.asarray(logits["counter_logit"], dtype=np.float64) - b_u[chunk.counter_tokens])
    return total

"""Each head's output read along a target at each answer: the dot products of DLA, in float64 (an MLP's
output is one 'head' of width d_mlp: hook_post [example, pos, 1, d_mlp], attribution.mlp_values).

    values[e, a, h] = sum over d of z[e, pos[e, a], h, d] * table[row[e, a], h, d]

z is a chunk's stored hook_z [example, pos, head, d_head] (float16 as stored, or float32), pos the
positions read, table a float32 table with one row per target direction (the readout's folded head
table, or its per-pair differences for 'diff') and row which of them each answer reads.

Every product is exact in float64 (float16 or float32 times float32), and the sum over d_head runs in
one fixed order: four running sums over d mod 4, each in order of d, then (s0 + s1) + (s2 + s3). So the
C kernel (_head_dot.c: one pass over the stored values with the GIL released, AVX2 and F16C where the
CPU has them) and the numpy code below give the same bits (where both give NaN, its sign and payload may
differ: not part of the contract), and a row's value depends on that row
alone: any chunking, thread or worker gives the same table (in a thread set to treat subnormals as
zero, float32 subnormals in z or the table count as 0 on both paths, as in any float32 arithmetic
there). The kernel is built at install where a C compiler is present (setup.py, optional); without it
the numpy code runs.
"""

from __future__ import annotations

from types import ModuleType
import numpy as np

from actstore.store.chunk_read import to_float32

try:
    from actstore.query import _head_dot as _kernel
    KERNEL: ModuleType | None = _kernel
except ImportError:  # installed without a C compiler: the numpy code below
    KERNEL = None

LANES = 4
_BLOCK = 1 << 17  # products per block of the numpy code (float64: 1 MB)


def head_dot(z: np.ndarray, pos: np.ndarray, rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """[example, answer, head] float64 (see the module docstring).

    z: [example, pos, head, d_head] float16 or float32 (any other dtype is read as float32);
    pos, rows: [example, answer] integers, positions of z and rows of table;
    table: [row, head, d_head] float32.
    """
    if z.ndim != 4 or pos.ndim != 2 or pos.shape != rows.shape or pos.shape[0] != z.shape[0]:
        raise ValueError(f"head_dot: z {z.shape}, pos {pos.shape} and rows {rows.shape} do not fit together")
    if table.ndim != 3 or table.shape[1:] != z.shape[2:] or table.dtype != np.float32:
        raise ValueError(f"head_dot: table must be [row, head, d_head] float32 of z's heads, got {table.dtype} "
                         f"{table.shape}")
    if not (np.issubdtype(pos.dtype, np.integer) and np.issubdtype(rows.dtype, np.integer)):
        raise ValueError(f"head_dot: pos and rows must be integers, got {pos.dtype} and {rows.dtype}")
    if z.dtype not in (np.float16, np.float32):
        z = z.astype(np.float32)
    pos = np.ascontiguousarray(pos, dtype=np.int64)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    out = np.empty(pos.shape + z.shape[2:3], dtype=np.float64)
    if KERNEL is not None:
        KERNEL.head_dot(np.ascontiguousarray(z), pos, rows, np.ascontiguousarray(table), out)
        return out
    if pos.size and (pos.min() < 0 or pos.max() >= z.shape[1] or rows.min() < 0 or rows.max() >= table.shape[0]):
        raise ValueError("head_dot: a position or table row is out of range")
    numpy_head_dot(z, pos, rows, table, out)
    return out


def numpy_head_dot(z: np.ndarray, pos: np.ndarray, rows: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """The kernel's sums with numpy, into out [example, answer, head] (arguments checked by head_dot).

    d_head is padded with zeros to a multiple of LANES: the kernel's lane sums are never -0.0 (they start at +0.0,
    and round-to-nearest gives +0.0 for x + -x and +0.0 + -0.0), so adding +0.0 leaves every sum's bits alone."""
    e, a = pos.shape
    h, d = z.shape[2], z.shape[3]
    width = -(-d // LANES) * LANES
    step = max(1, _BLOCK // max(1, a * h * width))
    padded = np.zeros((min(step, e), a, h, width))
    for start in range(0, e, step):
        ex = np.arange(start, min(e, start + step))
        values = padded[:ex.size]
        with np.errstate(invalid="ignore"):  # inf * 0 and inf - inf: NaN, quietly, as in the kernel
            picked = z[ex[:, None], pos[ex]]  # [b, a, h, d]
            values[..., :d] = to_float32(picked) if picked.dtype == np.float16 else picked  # exact widenings
            values[..., :d] *= table[rows[ex]]  # exact products in float64
            # [group, (b, a, h), lane]: reduced over its first axis, which is not the fast one in memory, numpy adds
            # the groups one after another in order (pairwise summation is for the fast axis only), in one call
            # however wide z is (a loop over an MLP's 768 groups cost ~10x more); + 0.0 gives a lane of only -0.0
            # products the kernel's +0.0 (its sums start at +0.0) where a reduce starts from the first value (numpy
            # 2.4's starts from its identity, +0.0, already) and changes no other value
            groups = np.ascontiguousarray(values.reshape(ex.size * a * h, width // LANES, LANES).transpose(1, 0, 2))
            lanes = (np.add.reduce(groups, axis=0) + 0.0).reshape(*values.shape[:3], LANES)
            out[ex] = (lanes[..., 0] + lanes[..., 1]) + (lanes[..., 2] + lanes[..., 3])


def answer_positions(z: np.ndarray) -> np.ndarray:
    """[example, answer] the positions of z [example, answer, head, d_head] gathered at the answers already."""
    return np.broadcast_to(np.arange(z.shape[1], dtype=np.int64), z.shape[:2])


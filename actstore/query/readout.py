"""The processed model's weights as a query reads them, and answer directions folded into them.

Direct attribution is linear once the final LayerNorm scale is fixed (it is stored):

    logit[t] - b_U[t] = sum over components c of  norm(c) . W_U[:, t],   norm(x) = (x - mean x) / scale

so the answer direction u_t = W_U[:, t] (centered over d_model for LN, times ln_final.w if the
model still has one) can be pushed back through each component's output weights once per token
(W_O[l, h] @ u_t, W_out[l] @ u_t, ...) and dotted with the stored activations. `Readout` holds
those folded directions for the distinct answer tokens of a store, so a query over a million
examples folds each weight once per token, not once per example. A Readout can also hold plain
d_model vectors (`Readout.of_vectors`: a direction from a file, the store or a weight expression),
read either like an unembedding column (final_ln=True: centred, ln_final.w folded in, divided by
the final LayerNorm scale) or as they are (final_ln=False: component . v, no scale).

Pure numpy; weights come from a store (`Weights.from_store`) or a plain dict (tests).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from actstore.errors import InvalidParameterError
from actstore.store.arch import Arch
from actstore.store.reader import Store

STORE_WEIGHTS_KEPT = 2  # stores whose weights stay in memory between queries


class Weights:
    """Architecture and weights of a processed model, read on first use and kept (float32 as stored).

    arch: the model's Arch (or TransformerLens config fields to build one from); param: a callable
    name -> array (e.g. `store.param`) or a mapping of TransformerLens state-dict names to arrays;
    names: the available names (default: the mapping's keys).
    """

    def __init__(self, arch: Arch | Mapping[str, Any], param: Callable[[str], np.ndarray] | Mapping[str, Any],
                 names: Iterable[str] | None = None) -> None:
        self.arch = arch if isinstance(arch, Arch) else Arch.from_config(arch)
        if isinstance(param, Mapping):
            mapping = param
            self._read: Callable[[str], np.ndarray] = lambda n: np.asarray(_numpy(mapping[n]))
            self.names = set(mapping.keys() if names is None else names)
        else:
            if names is None:
                raise InvalidParameterError("Weights(param=callable) needs the list of parameter names")
            self._read = param
            self.names = set(names)
        self._cache: dict[str, np.ndarray] = {}
        self.readouts: OrderedDict[bytes, Readout] = OrderedDict()  # see Readout.of

    @classmethod
    def from_store(cls, store: Store) -> "Weights":
        """The weights of a store, shared by the queries of this process (see `_STORE_WEIGHTS`).

        Reading GPT-2 small's W_E and W_U alone decompresses 300 MB, as much as a per-head DLA
        over a few hundred examples reads; a session's later queries reuse what earlier ones read.
        """
        if not isinstance(store.path, Path):  # a remote store (store/fs.py): shared by this Store only
            return cls(store.arch, store.param, store.param_names)
        root = store.path / "zarr.json"
        try:
            st = root.stat()
            key: tuple[Any, ...] = (str(root.resolve()), st.st_ino, st.st_mtime_ns)
        except OSError:
            return cls(store.arch, store.param, store.param_names)
        weights = _STORE_WEIGHTS.pop(key, None) or cls(store.arch, store.param, store.param_names)
        _STORE_WEIGHTS[key] = weights  # most recent last
        while len(_STORE_WEIGHTS) > STORE_WEIGHTS_KEPT:
            _STORE_WEIGHTS.pop(next(iter(_STORE_WEIGHTS)))
        return weights

    # --- raw access ---------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return name in self.names

    def param(self, name: str) -> np.ndarray:
        """A weight as stored (float32), read once."""
        if name not in self._cache:
            if name not in self.names:
                raise InvalidParameterError(f"the model's weights have no {name!r}; the store must hold every "
                                            f"weight of the processed model (re-ingest to add it)")
            self._cache[name] = np.asarray(self._read(name), dtype=np.float32)
        return self._cache[name]

    def f64(self, name: str) -> np.ndarray:
        """A small weight as float64, kept (big ones: `param(name).astype(np.float64)` where used)."""
        key = name + "#f64"
        if key not in self._cache:
            self._cache[key] = self.param(name).astype(np.float64)
        return self._cache[key]

    def maybe(self, name: str) -> np.ndarray | None:
        return self.f64(name) if self.has(name) else None

    # --- LayerNorms ---------------------------------------------------------------------------

    def ln_weight(self, layer: int | None, ln: Literal["ln1", "ln2", "ln_final"]
                  ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(w, b) of a LayerNorm that was not folded into the next weights, else (None, None)."""
        return self.maybe(Arch.ln_weight(layer, ln, "w")), self.maybe(Arch.ln_weight(layer, ln, "b"))

    def center(self, x: np.ndarray, axis: int = -1) -> np.ndarray:
        """Centre read-out vectors along d_model for LN models: (x - mean x) . v == x . centred(v)."""
        return x - x.mean(axis=axis, keepdims=True) if self.arch.layer_norm else x

    # --- answer directions --------------------------------------------------------------------

    def unembed_directions(self, tokens: np.ndarray) -> np.ndarray:
        """[token] ids -> [token, d_model] float64 directions u with logit - b_U = norm(resid) . u."""
        w_u = self.param(Arch.W_U)  # [d_model, d_vocab_out]
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= w_u.shape[1]):
            raise InvalidParameterError(f"answer token ids must lie in [0, {w_u.shape[1]}) (the unembedding's "
                                        f"vocabulary), got {int(tokens.min())}..{int(tokens.max())}")
        return self.after_final_ln(w_u[:, tokens].T.astype(np.float64))  # [token, d_model]

    def after_final_ln(self, vectors: np.ndarray) -> np.ndarray:
        """[k, d_model] vectors read after the final LayerNorm (like W_U columns) as directions on the
        residual stream before it: centre(ln_final.w * v), to be divided by the stored final scale."""
        w, _ = self.ln_weight(None, "ln_final")
        return self.center(vectors * w if w is not None else vectors)

    def final_bias_logits(self, tokens: np.ndarray) -> np.ndarray | None:
        """ln_final.b @ W_U[:, t] for an unfolded final LayerNorm (a constant term), else None."""
        _, b = self.ln_weight(None, "ln_final")
        if b is None:
            return None
        return self.param(Arch.W_U)[:, np.asarray(tokens, dtype=np.int64)].T.astype(np.float64) @ b


# (store root path, inode, mtime of its zarr.json) -> Weights; a re-created store gets a new key
_STORE_WEIGHTS: OrderedDict[tuple[Any, ...], Weights] = OrderedDict()


class Readout:
    """Answer directions of a set of tokens folded into every component's output weights.

    tokens: the distinct token ids whose directions a query needs (answers and counterfactuals);
    `rows(ids)` maps token ids of any shape to row indices into the tables below.
    Tables (float64, one row per token):
      u            [token, d_model]          the answer direction itself
      head(l)      [token, head, d_head]     W_O[l, h] @ u
      mlp(l)       [token, d_mlp]            W_out[l] @ u
      attn_bias(l) [token]                   b_O[l] . u
      mlp_bias(l)  [token]                   b_out[l] . u
    `table(key, make)` caches further tables (paths through heads add theirs).
    """

    KEPT = 4  # readouts (token sets) a Weights keeps for later queries

    @classmethod
    def of(cls, weights: Weights, tokens: np.ndarray) -> "Readout":
        """The Readout of these tokens, shared with earlier queries on the same weights."""
        key = np.unique(np.asarray(tokens, dtype=np.int64).ravel()).tobytes()
        return cls._shared(weights, key, lambda: cls(weights, tokens))

    @classmethod
    def of_vectors(cls, weights: Weights, vectors: np.ndarray, final_ln: bool) -> "Readout":
        """The Readout of plain [k, d_model] vectors (rows 0..k-1), shared like `of`."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        key = b"vectors" + bytes([bool(final_ln)]) + np.asarray(vectors.shape).tobytes() + vectors.tobytes()
        return cls._shared(weights, key, lambda: cls(weights, np.arange(vectors.shape[0]), vectors=vectors,
                                                     final_ln=final_ln))

    @classmethod
    def _shared(cls, weights: Weights, key: bytes, make: Callable[[], "Readout"]) -> "Readout":
        readout = weights.readouts.pop(key, None) or make()
        weights.readouts[key] = readout
        while len(weights.readouts) > cls.KEPT:
            weights.readouts.pop(next(iter(weights.readouts)))
        return readout

    def __init__(self, weights: Weights, tokens: np.ndarray, *, vectors: np.ndarray | None = None,
                 final_ln: bool = True) -> None:
        """tokens: output token ids whose unembedding directions to hold; or, with `vectors` [k, d_model],
        row numbers 0..k-1 of those vectors, read like unembedding columns if final_ln, else as they are."""
        self.weights = weights
        self.tokens = np.unique(np.asarray(tokens, dtype=np.int64).ravel())
        self.vectors = None if vectors is None else np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        self.final_ln = bool(final_ln) or self.vectors is None  # token directions always read the final LN
        if self.vectors is None:
            self.u = weights.unembed_directions(self.tokens)  # [token, d_model]
        else:
            if not np.array_equal(self.tokens, np.arange(self.vectors.shape[0])):
                raise InvalidParameterError("Readout(vectors=...) takes tokens 0..k-1, the rows of the vectors")
            self.u = weights.after_final_ln(self.vectors) if self.final_ln else self.vectors
        self._tables: dict[tuple[Any, ...], np.ndarray] = {}
        self._lookup = np.full(int(self.tokens.max()) + 1 if self.tokens.size else 1, -1, dtype=np.int64)
        self._lookup[self.tokens] = np.arange(self.tokens.size)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each token id (same shape); InvalidParameterError for a token the readout lacks."""
        ids = np.asarray(ids, dtype=np.int64)
        ok = (ids >= 0) & (ids < self._lookup.size)
        rows = np.where(ok, self._lookup[np.clip(ids, 0, self._lookup.size - 1)], -1)
        if (rows < 0).any():
            raise InvalidParameterError(f"token {int(ids[rows < 0].ravel()[0])} is not among this readout's tokens")
        return rows

    def table(self, key: tuple[Any, ...], make: Callable[[], np.ndarray]) -> np.ndarray:
        """A per-token table computed once by `make` and kept under `key` (other modules add their own)."""
        if key not in self._tables:
            self._tables[key] = make()
        return self._tables[key]

    def head(self, layer: int) -> np.ndarray:
        def make() -> np.ndarray:
            w_o = self.weights.param(Arch.attn_weight(layer, "W_O")).astype(np.float64)  # [head, d_head, d_model]
            return (w_o.reshape(-1, w_o.shape[-1]) @ self.u.T).T.reshape(-1, *w_o.shape[:2])  # a matmul, not einsum
        return self.table(("head", layer), make)

    def mlp(self, layer: int) -> np.ndarray:
        def make() -> np.ndarray:
            w_out = self.weights.param(Arch.mlp_weight(layer, "W_out")).astype(np.float64)  # [d_mlp, d_model]
            return self.u @ w_out.T
        return self.table(("mlp", layer), make)

    def attn_bias(self, layer: int) -> np.ndarray:
        return self.table(("attn_bias", layer), lambda: self._bias(Arch.attn_weight(layer, "b_O")))

    def mlp_bias(self, layer: int) -> np.ndarray:
        return self.table(("mlp_bias", layer), lambda: self._bias(Arch.mlp_weight(layer, "b_out")))

    def final_bias(self) -> np.ndarray | None:
        """[token] ln_final.b @ W_U[:, t] (a vector v: ln_final.b @ v, read after the final LayerNorm) for
        an unfolded final LayerNorm, else None."""
        if self.vectors is None:
            return self.weights.final_bias_logits(self.tokens)
        _, b = self.weights.ln_weight(None, "ln_final")
        return self.vectors @ b if b is not None and self.final_ln else None

    def _bias(self, name: str) -> np.ndarray:
        b = self.weights.maybe(name)
        return np.zeros(self.tokens.size) if b is None else self.u @ b


class Target:
    """Which direction a query reads at each answer: the correct token, or correct minus counterfactual,
    or one fixed row of the Readout for every answer (`Target.fixed`: a chosen token or vector).

    correct, counter: [example, answer] row indices into a Readout (counter None for 'correct').
    `take(table)` gathers a per-token table for every answer: [example, answer, ...] (for a fixed
    row, a read-only broadcast view of that row). `dot(left, ids, table)` is left[ids] . take(table).
    """

    KINDS = ("correct", "diff")

    def __init__(self, kind: str, correct: np.ndarray, counter: np.ndarray | None) -> None:
        if kind not in self.KINDS:
            raise InvalidParameterError(f"target must be one of {', '.join(self.KINDS)}, got {kind!r}")
        if kind == "diff" and counter is None:
            raise InvalidParameterError("target 'diff' needs counterfactual tokens, and this task has none; "
                                        "use target='correct'")
        self.kind, self.correct, self.counter = kind, correct, counter
        self.row: int | None = None
        self._budget: Any = None  # see keep()
        self._kept: dict[tuple[int, ...], tuple[tuple[Any, ...], np.ndarray]] = {}
        self.kept_bytes = 0

    def keep(self, budget: Any) -> "Target":
        """Keep what take() and dot() compute (read-only) while `budget` (query/memo.Budget) has room:
        for a Target that later queries on the same chunk reuse. Returns self."""
        self._budget = budget
        return self

    def _kept_or(self, refs: tuple[Any, ...], key: tuple[int, ...], make: Callable[[], np.ndarray]) -> np.ndarray:
        hit = self._kept.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], refs)):
            return hit[1]
        out = make()
        if self._budget is not None and self._budget.take(out.nbytes):
            out.setflags(write=False)
            self._kept[key] = (refs, out)
            self.kept_bytes += out.nbytes
        return out

    @classmethod
    def fixed(cls, row: int, shape: tuple[int, ...]) -> "Target":
        """Row `row` of the Readout at every one of `shape` ([example, answer]) read positions."""
        target = cls("correct", np.full(shape, int(row), dtype=np.int64), None)
        target.row = int(row)
        return target

    def take(self, table: np.ndarray) -> np.ndarray:
        if self.row is not None:
            return np.broadcast_to(table[self.row], self.correct.shape + table.shape[1:])
        if self._budget is not None:
            return self._kept_or((table,), (id(table),), lambda: self._take(table))
        return self._take(table)

    def indexed(self, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, index): take(table) as rows[index], the same values bit for bit, without gathering a table
        row per answer where rows are shared: rows [row, ...] (the table itself, one fixed row, each distinct
        pair's difference, or, with too many distinct pairs, take(table) itself, kept as take keeps it) and index
        [example, answer] int64 (query/head_dot.py reads it so)."""
        if self.row is not None:
            return table[self.row:self.row + 1], np.zeros(self.correct.shape, dtype=np.int64)
        if self.kind != "diff" or self.counter is None:
            return table, self.correct
        pairs = self._pairs()
        if pairs is None:
            taken = self.take(table)  # [example, answer, ...]: one row per answer
            return taken.reshape(-1, *table.shape[1:]), np.arange(self.correct.size).reshape(self.correct.shape)
        return table[pairs[0]] - table[pairs[1]], pairs[2]

    def _take(self, table: np.ndarray) -> np.ndarray:
        if self.kind != "diff":
            return table[self.correct]
        pairs = self._pairs()
        if pairs is None:
            return table[self.correct] - table[self.counter]
        correct, counter, inverse = pairs  # the same differences, each computed once and gathered
        return (table[correct] - table[counter])[inverse]

    def _pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(correct rows, counter rows, [example, answer] index into them) of the distinct (correct,
        counter) pairs, or None where they are not fewer than half the answers (kept: a chunk's
        Target takes one table per layer and kind)."""
        if not hasattr(self, "_pair_rows"):
            self._pair_rows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
            if self.correct.size and self.counter is not None:
                (correct, counter), inverse = distinct_rows([self.correct, self.counter])
                if 2 * correct.size <= self.correct.size:
                    self._pair_rows = (correct, counter, inverse)
        return self._pair_rows

    def dot(self, left: np.ndarray, ids: np.ndarray, table: np.ndarray) -> np.ndarray:
        """[example, answer] float64: left[ids] . take(table) at every answer (e.g. an embedding's share of
        the target: left W_E [token, d_model], ids the input tokens, table the Readout's u [row, d_model]).

        Computed once per distinct (id, target rows) combination and gathered: the rows of `left` come
        from few tokens, and answers are many.
        """
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return np.zeros(ids.shape)
        base = ids.base if ids.base is not None else ids
        if self._budget is not None and not base.flags.writeable:  # a view of arrays that never change
            where = (id(left), id(table), ids.__array_interface__["data"][0], *ids.shape, *ids.strides)
            return self._kept_or((left, table, base), where, lambda: self._dot(left, ids, table))
        return self._dot(left, ids, table)

    def _dot(self, left: np.ndarray, ids: np.ndarray, table: np.ndarray) -> np.ndarray:
        parts = [ids] if self.row is not None else [ids, self.correct]
        if self.row is None and self.kind == "diff" and self.counter is not None:
            parts.append(self.counter)
        distinct, inverse = distinct_rows(parts)
        lhs = left[distinct[0]].astype(np.float64)
        if self.row is not None:
            values = np.einsum("pm,m->p", lhs, table[self.row])
        else:
            rhs = table[distinct[1]]
            if len(parts) == 3:
                rhs = rhs - table[distinct[2]]
            values = np.einsum("pm,pm->p", lhs, rhs)
        return values[inverse]


DENSE_KEYS = 1 << 16  # distinct_rows counts keys in a flag table up to this many slots, or 8 per element


def distinct_rows(parts: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """The distinct combinations of same-shaped non-negative int arrays, in sorted order (as np.unique
    of their mixed-radix key), and where each element's combination is: ([part values [p]], inverse
    [same shape]), inverse indexing the p combinations.

    The keys are counted in a flag table when their range is small (token ids and rows are), which
    is O(n), not np.unique's sort; the combinations and their order are the same either way.
    """
    shape = parts[0].shape
    bases = [int(part.max()) + 1 if part.size else 1 for part in parts]
    grid = np.zeros(shape, dtype=np.int64)
    for part, base in zip(parts, bases):  # < 2**63 for any vocabulary below 2**21 tokens
        grid = grid * base + part
    key = grid.ravel()
    span = int(np.prod(bases, dtype=np.float64))
    if span <= max(DENSE_KEYS, 8 * key.size):
        seen = np.zeros(span, dtype=bool)
        seen[key] = True
        keys = np.flatnonzero(seen)
        slot = np.empty(span, dtype=np.int64)
        slot[keys] = np.arange(keys.size)
        inverse = slot[key]
    else:
        keys, inverse = np.unique(key, return_inverse=True)
    values = []
    for base in reversed(bases):  # the parts back out of the key, last first
        values.append(keys % base)
        keys = keys // base
    return values[::-1], inverse.reshape(shape)


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (tests pass a state dict); no torch import here
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)

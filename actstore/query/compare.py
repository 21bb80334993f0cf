"""`compare(a, b, level, target, corrupted)`: one store's direct logit attribution against another's.

Per component (and answer): the mean DLA in A, in B, and the mean change B - A with its 95%
interval, paired by example, so a change is measured on the same examples, never on two samples.
The common cases:

- **model vs model, checkpoint vs checkpoint** (the default): A and B hold the same examples
  run through two models of one shape (same layers and heads, MLPs or not). Same task, task
  parameters and seed, and per example the same tokens, answer positions and answer tokens (and
  counterfactual tokens for target 'diff'). Which heads changed their attribution.
- **clean vs corrupted** (`corrupted=True`): B holds the corrupted twins of A's examples, run
  through the same model (same weights): the same task and seed, task parameters that differ in
  `corrupt` only (ioi `corrupt=abc`, days `corrupt=previous`), the same answer positions and
  answer tokens (and counterfactual tokens for 'diff', so the change is read along one
  direction). Where A's examples record their twins (`examples.corrupted_tokens`), B's tokens
  must be exactly those twins. Which components carry the clean run's answer.
- a store against itself or a copy: every change is 0.

Examples: the common committed prefix, example_id < min(n_A, n_B), when the per-example check
above confirms they are the same examples: e.g. a store whose ingest was interrupted against a
finished one. (Today's tasks draw their examples for the whole n at once, so two stores of one
task and seed made with different n hold different examples: refused, with that said.)

Stores that do not cover the same examples are refused with one line naming both paths and the
first difference, before any attribution is computed. DLA comes from each store's derived cache
(the `dla` table, computed and cached on first use).
"""

from __future__ import annotations

import polars as pl

from actstore.errors import InvalidParameterError
from actstore.query import derived
from actstore.query.breakdown import with_interval
from actstore.query.options import TARGETS, Target
from actstore.store.reader import Store

LEVELS = ("head", "layer")  # the granularities compared (neuron and path tables are too fine to pair usefully)
KEYS = ("answer_idx", "component", "layer", "head")
COLUMNS = (*KEYS, "target", "mean_a", "mean_b", "change", "std", "n", "ci_low", "ci_high")
VARIANT_PARAM = "corrupt"  # the task parameter that makes a task's corrupted variant (ioi, days)


def compare(a: Store, b: Store, level: str = "head", target: Target = "correct",
            corrupted: bool = False) -> pl.DataFrame:
    """Per (answer_idx, component): mean DLA in `a` and in `b`, the mean change b - a over the
    examples both hold (paired by example_id), its std, n and 95% Student t interval, sorted by
    |change| (largest first).

    level:     'head' (default) or 'layer'
    target:    'correct' (the answer's logit) or 'diff' (correct minus counterfactual)
    corrupted: `b` holds the corrupted twins of `a`'s examples, run through the same model
    returns:   answer_idx, component, layer, head, target, mean_a, mean_b, change, std, n,
               ci_low, ci_high
    """
    if level not in LEVELS:
        raise InvalidParameterError(f"compare: level must be one of {', '.join(LEVELS)}, got {level!r}")
    if target not in TARGETS:
        raise InvalidParameterError(f"compare: target must be one of {', '.join(TARGETS)}, got {target!r}")
    n = common_examples(a, b, target=target, corrupted=corrupted)
    if corrupted:
        _check_same_model(a, b)
    else:
        _check_same_shape(a, b, level)
    params = {"level": level, "target": target}
    ta = derived.cached(a, "dla", params).filter(pl.col("example_id") < n)
    tb = derived.cached(b, "dla", params).filter(pl.col("example_id") < n)
    only_a = sorted(set(ta["component"].unique()) - set(tb["component"].unique()))
    only_b = sorted(set(tb["component"].unique()) - set(ta["component"].unique()))
    if only_a or only_b:
        side, names = ("A", only_a) if only_a else ("B", only_b)
        raise InvalidParameterError(
            f"compare: the models' components differ (only in {side}: {', '.join(names[:5])}"
            f"{' ...' if len(names) > 5 else ''}); {_names(a, b)}")
    joined = ta.select("example_id", *KEYS, pl.col("value").alias("a")).join(
        tb.select("example_id", "answer_idx", "component", pl.col("value").alias("b")),
        on=["example_id", "answer_idx", "component"], how="inner", maintain_order="left")
    return paired_change(joined, list(KEYS)).with_columns(pl.lit(target).alias("target")).select(COLUMNS)


def paired_change(rows: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Per `keys` group of `rows` (columns a, b: one pair per example): mean_a, mean_b, change (mean
    of b - a), std (of b - a, ddof 1), n, ci_low, ci_high; sorted by |change|, largest first (ties
    in the rows' order)."""
    d = pl.col("b") - pl.col("a")
    stats = rows.group_by(keys, maintain_order=True).agg(
        mean_a=pl.col("a").mean(), mean_b=pl.col("b").mean(), mean=d.mean(), std=d.std(ddof=1),
        n=d.count().cast(pl.Int64))
    out = with_interval(stats).rename({"mean": "change"})
    return out.sort(pl.col("change").abs(), descending=True, maintain_order=True)


def common_examples(a: Store, b: Store, target: str = "correct", corrupted: bool = False) -> int:
    """How many examples (example_id 0 .. n-1) `a` and `b` both hold as the same examples (or, with
    `corrupted`, `b` as the twins of `a`'s); InvalidParameterError naming the first difference."""
    ma, mb = a.manifest, b.manifest
    if ma.task != mb.task:
        raise InvalidParameterError(f"compare: A is task {ma.task!r}, B is task {mb.task!r}: the stores hold "
                                    f"different examples; {_names(a, b)}")
    if ma.seed != mb.seed:
        raise InvalidParameterError(f"compare: A is {ma.task} seed {ma.seed}, B seed {mb.seed}: the stores hold "
                                    f"different examples; {_names(a, b)}")
    differ = sorted(k for k in ma.task_params.keys() | mb.task_params.keys()
                    if ma.task_params.get(k) != mb.task_params.get(k))
    shown = ", ".join(f"{k}: {ma.task_params.get(k)!r} vs {mb.task_params.get(k)!r}" for k in differ)
    if not corrupted and differ:
        hint = (" (if B holds A's corrupted twins, pass --corrupted / corrupted=True)"
                if differ == [VARIANT_PARAM] else "")
        raise InvalidParameterError(f"compare: the task parameters differ ({shown}): the stores hold different "
                                    f"examples{hint}; {_names(a, b)}")
    if corrupted and [k for k in differ if k != VARIANT_PARAM]:
        raise InvalidParameterError(f"compare --corrupted: the task parameters differ in more than "
                                    f"{VARIANT_PARAM!r} ({shown}); {_names(a, b)}")
    n = min(a.n_examples, b.n_examples)
    if n == 0:
        raise InvalidParameterError(f"compare: no committed examples in common (A holds {a.n_examples}, "
                                    f"B {b.n_examples}); {_names(a, b)}")
    ea, eb = _first(a.examples, n), _first(b.examples, n)
    twins = corrupted and "corrupted_tokens" in ea.columns and ea["corrupted_tokens"].null_count() < n
    if corrupted and not twins and not differ:
        raise InvalidParameterError(
            f"compare --corrupted: A's examples record no corrupted twins and B was made with A's task "
            f"parameters, so B holds A's examples, not their twins (ingest B with --param {VARIANT_PARAM}=...); "
            f"{_names(a, b)}")
    checks = [("answer_positions", "answer_positions"), ("answer_tokens", "answer_tokens")]
    checks.append(("corrupted_tokens", "tokens") if twins else ("length", "length") if corrupted
                  else ("tokens", "tokens"))
    if target == "diff":
        checks.append(("counter_tokens", "counter_tokens"))
    for col_a, col_b in checks:
        _check_column(ea, eb, col_a, col_b, a, b, corrupted)
    return n


def _first(examples: pl.DataFrame, n: int) -> pl.DataFrame:
    return examples.sort("example_id").head(n)


def _check_column(ea: pl.DataFrame, eb: pl.DataFrame, col_a: str, col_b: str, a: Store, b: Store,
                  corrupted: bool) -> None:
    what = "B's tokens are not A's corrupted twins" if col_a == "corrupted_tokens" else (
        f"the examples' {col_a} differ")
    for col, store in ((col_a, ea), (col_b, eb)):
        if col not in store.columns:
            raise InvalidParameterError(f"compare: {what}: the examples of {'A' if store is ea else 'B'} have no "
                                        f"{col} column; {_names(a, b)}")
    pair = pl.DataFrame({"example_id": ea["example_id"], "x": ea[col_a], "y": eb[col_b]})
    bad = pair.filter(pl.col("x").ne_missing(pl.col("y")))
    if bad.height:
        first = bad.row(0, named=True)
        mode = " (clean vs corrupted)" if corrupted else ""
        hint = ("" if corrupted else " (different tokenizers or data?)" if col_a == "tokens" else "")
        raise InvalidParameterError(
            f"compare{mode}: {what}{hint}, first at example {first['example_id']} (A's {col_a} "
            f"{_short(first['x'])} vs B's {col_b} {_short(first['y'])}; {bad.height} of {pair.height} examples); "
            f"{_names(a, b)}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_same_shape(a: Store, b: Store, level: str) -> None:
    """The components of two models correspond: same layers (and heads, at level 'head'), MLPs or not."""
    xa, xb = a.arch, b.arch
    shape_a = (xa.n_layers, xa.n_heads if level == "head" else None, xa.has_mlp)
    shape_b = (xb.n_layers, xb.n_heads if level == "head" else None, xb.has_mlp)
    if shape_a != shape_b:
        raise InvalidParameterError(
            f"compare: the models' components do not correspond (A: {_shape(xa)}, B: {_shape(xb)}); "
            f"{_names(a, b)}")


def _shape(arch: object) -> str:
    n_layers, n_heads, has_mlp = (getattr(arch, k) for k in ("n_layers", "n_heads", "has_mlp"))
    return f"{n_layers} layers x {n_heads} heads, {'with' if has_mlp else 'no'} MLPs"


def _check_same_model(a: Store, b: Store) -> None:
    """Clean vs corrupted compares two runs of one model."""
    wa, wb = a.manifest.weights_sha256, b.manifest.weights_sha256
    differ = wa != wb if wa and wb else a.manifest.model_config != b.manifest.model_config
    if differ:
        raise InvalidParameterError(
            f"compare --corrupted: A and B were ingested with different models ({a.manifest.model_spec} vs "
            f"{b.manifest.model_spec}); clean vs corrupted compares one model's two runs; {_names(a, b)}")


def _names(a: Store, b: Store) -> str:
    return f"A = {str(a.path)!r}, B = {str(b.path)!r}"

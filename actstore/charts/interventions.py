"""Charts of stored intervention sweeps, over the rows of `actstore.query.interventions`.

Input rows: sweep, kind, hook, layer, head (null for layer hooks), pos, role (null without a
position grain), example_id, answer_idx, metric, value, clean, corrupted: one per target,
example, answer and metric. Each builder reduces them to one mean (with a 95% Student t
interval, as `actstore.query.breakdown` computes it) per cell, bar or point first.

What is averaged (`value`):
    'score'   (value - corrupted) / (clean - corrupted), per row: 1 where the intervention
              restores the clean run, 0 where it leaves the corrupted one; rows where
              clean == corrupted have no score and are left out of the mean
    'effect'  value - clean: what the intervention changes on the clean run (ablations)
    'value'   the metric on the intervened run itself

    position_heatmap   layer x position (or head x position) of a ',pos' sweep
    head_heatmap       layer x head of a 'head' sweep
    effect_bars        mean effect per head (or layer) with 95% intervals, optionally split by a label
    atp_scatter        attribution patching against exact patching of the same targets
    sweep_chart        the chart that fits a sweep's grain and kind (what the report draws)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import altair as alt
import polars as pl

from actstore.charts import style
from actstore.charts.attention import role_order
from actstore.charts.tables import check_split, require_columns
from actstore.errors import InvalidParameterError
from actstore.query.breakdown import breakdown
from actstore.query.interventions import agreement, normalised

ROW_COLUMNS = ("layer", "head", "pos", "role", "example_id", "answer_idx", "metric", "value", "clean", "corrupted")
VALUES = ("score", "effect", "value")
VALUE_TITLES = {"score": "normalised score", "effect": "effect (value - clean)", "value": "metric value"}
LEGEND_TITLES = {"score": "normalised score", "effect": "effect", "value": "value"}
METRIC_TITLES = {"logit_diff": "logit difference", "correct_logit": "correct logit", "logprob": "log prob",
                 "loss": "loss"}
KIND_TITLES = {"patch": "Activation patching", "path_patch": "Path patching", "atp": "Attribution patching",
               "ablate": "Ablation"}
MAX_FACETS = 12       # answers drawn as panels of effect_bars (more are pooled)
MAX_CELLS = 4500      # cells of one heatmap (Altair's inline-data guard is 5000 rows)
TOP = 12              # bars of effect_bars: the targets with the largest mean |effect|
SLOTS = ("auto", "pos", "role")


# --- shared steps -------------------------------------------------------------------------------

def default_value(kind: str) -> str:
    """What a sweep's charts average by default: the effect for ablations, the normalised score otherwise."""
    return "effect" if kind == "ablate" else "score"


def with_value(rows: pl.DataFrame, value: str, what: str) -> pl.DataFrame:
    """`rows` plus column `v`: the quantity charted (see the module docstring)."""
    require_columns(rows, ["value", "clean", "corrupted"], what)
    if value == "score":
        return normalised(rows).with_columns(v=pl.col("score"))
    if value == "effect":
        return rows.with_columns(v=pl.col("value").cast(pl.Float64) - pl.col("clean").cast(pl.Float64))
    if value == "value":
        return rows.with_columns(v=pl.col("value").cast(pl.Float64))
    raise InvalidParameterError(f"{what}: value must be one of {', '.join(VALUES)}, got {value!r}")


def _select(rows: pl.DataFrame, metric: str | None, answer: int | None, what: str) -> pl.DataFrame:
    """Rows of `metric` (None: every metric) and `answer` (None: every answer)."""
    require_columns(rows, ROW_COLUMNS, what)
    if rows.height == 0:
        raise InvalidParameterError(f"{what}: the sweep has no rows")
    if metric is not None:
        present = rows.get_column("metric").unique(maintain_order=True).to_list()
        if metric not in present:
            raise InvalidParameterError(f"{what}: metric {metric!r} not in the sweep (metrics: {', '.join(present)})")
        rows = rows.filter(pl.col("metric") == metric)
    if answer is not None:
        answers = sorted(rows.get_column("answer_idx").unique().to_list())
        if answer not in answers:
            raise InvalidParameterError(f"{what}: answer {answer} not in the sweep (answers: {answers})")
        rows = rows.filter(pl.col("answer_idx") == answer)
    return rows


def drop_degenerate(rows: pl.DataFrame, examples: pl.DataFrame | None) -> pl.DataFrame:
    """`rows` less the logit_diff rows of answers whose counterfactual token is the answer itself:
    the logit difference is 0 on every run there, so they measure nothing and only pull means to 0
    (addition's twins change one digit of the sum; the other digits keep their token)."""
    if (examples is None or not {"example_id", "answer_tokens", "counter_tokens"} <= set(examples.columns)
            or "metric" not in rows.columns):
        return rows
    pairs = (examples.select("example_id", "answer_tokens", "counter_tokens").drop_nulls()
             .filter(pl.col("answer_tokens").list.len() == pl.col("counter_tokens").list.len())
             .with_columns(answer_idx=pl.int_ranges(pl.col("answer_tokens").list.len()))
             .explode("answer_tokens", "counter_tokens", "answer_idx")
             .filter(pl.col("answer_tokens") == pl.col("counter_tokens"))
             .select(pl.col("example_id").cast(rows.schema["example_id"]),
                     pl.col("answer_idx").cast(rows.schema["answer_idx"]), metric=pl.lit("logit_diff")))
    return rows.join(pairs, on=["example_id", "answer_idx", "metric"], how="anti") if pairs.height else rows


def _metrics(rows: pl.DataFrame) -> list[str]:
    return rows.get_column("metric").unique(maintain_order=True).to_list()


def _summary(table: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """mean, std, n, ci_low, ci_high of `v` per `keys` (rows without a value are left out)."""
    return breakdown(table, group_by=[], value="v", keys=keys)


def _has_heads(rows: pl.DataFrame) -> bool:
    return rows.get_column("head").null_count() < rows.height


def _has_positions(rows: pl.DataFrame) -> bool:
    return rows.get_column("pos").null_count() < rows.height


def _target_expr(heads: bool) -> pl.Expr:
    """'L3H1' for a head, 'L3' for a layer-level target."""
    if heads:
        return pl.format("L{}H{}", pl.col("layer"), pl.col("head"))
    return pl.format("L{}", pl.col("layer"))


def _target_order(table: pl.DataFrame) -> list[str]:
    """Target labels in layer, head order."""
    cols = ["layer", "head"] if "head" in table.columns else ["layer"]
    order = table.select("target", *cols).unique().sort(cols, nulls_last=False)
    return order.get_column("target").to_list()


def _value_title(value: str, metric: str | None) -> str:
    name = VALUE_TITLES.get(value, value)
    return f"{name} of {METRIC_TITLES.get(metric, metric)}" if metric else name


def _colour(summary: pl.DataFrame, value: str, title: str, facets: bool) -> alt.Color:
    """Diverging colour of the mean; one symmetric domain unless panels of different metrics hold effects
    or raw values on different scales (then each panel its own, centred at 0)."""
    legend = LEGEND_TITLES.get(value, title)
    if facets and value != "score":
        return style.diverging("mean", legend)
    return style.diverging("mean", legend, summary.get_column("mean"))


def _tooltips(*first: alt.Tooltip, title: str) -> list[alt.Tooltip]:
    return [
        *first,
        alt.Tooltip("metric:N", title="Metric"),
        style.value_tooltip("mean", f"mean {title}"),
        style.value_tooltip("ci_low", "95% CI low"),
        style.value_tooltip("ci_high", "95% CI high"),
        alt.Tooltip("n:Q", title="rows (example x answer)"),
    ]


def _faceted(base: alt.Chart, metrics: list[str], value: str) -> alt.TopLevelMixin:
    if len(metrics) < 2:
        return base
    chart = base.facet(column=alt.Column("metric:N", title=None, sort=metrics))
    return chart.resolve_scale(color="independent") if value != "score" else chart


def _subtitle(vtitle: str, answer: int | None) -> str:
    """'normalised score of logit difference, mean over examples and answers' (answer -1: answers drawn apart)."""
    over = {None: " and answers", -1: ""}.get(answer, f", answer {answer}")
    return f"{vtitle}, mean over examples{over}"


# --- positions ----------------------------------------------------------------------------------

def position_slots(rows: pl.DataFrame, slots: str = "auto", tokens: pl.DataFrame | None = None
                   ) -> tuple[pl.DataFrame, list[str]]:
    """`rows` plus `slot` (the x label of each row's position) and the slots in axis order.

    slots 'role': one column per token role (positions addressed by role, which may differ between
    examples); 'pos': one per position index, labelled 'index: role' with the role most often at that
    index, else the most common token there (from `tokens`: store.tokens), else the index alone;
    'auto': 'role' where every row has a role and some role sits at several indices, else 'pos'.
    """
    if slots not in SLOTS:
        raise InvalidParameterError(f"slots must be one of {', '.join(SLOTS)}, got {slots!r}")
    rows = rows.filter(pl.col("pos").is_not_null())
    roles = rows.get_column("role")
    if slots == "auto":
        spread = rows.filter(pl.col("role").is_not_null()).group_by("role").agg(pl.col("pos").n_unique().alias("k"))
        slots = "role" if roles.null_count() == 0 and (spread.get_column("k") > 1).any() else "pos"
    if slots == "role":
        out = rows.with_columns(slot=pl.col("role").fill_null("other"))
        return out, role_order(out.select(role=pl.col("slot"), pos=pl.col("pos")))
    names = _position_names(rows, tokens)
    labels = pl.DataFrame({"pos": list(names), "slot": [f"{p}: {n}" if n else str(p) for p, n in names.items()]},
                          schema={"pos": rows.schema["pos"], "slot": pl.String})
    out = rows.join(labels, on="pos", how="left", maintain_order="left")
    return out, [labels.get_column("slot")[i] for i in labels.get_column("pos").arg_sort().to_list()]


def _position_names(rows: pl.DataFrame, tokens: pl.DataFrame | None) -> dict[int, str]:
    """pos -> the role most often at that position in the rows (else the most common str_token)."""
    positions = sorted(int(p) for p in rows.get_column("pos").unique().to_list())
    names = {p: "" for p in positions}
    by_role = (rows.filter(pl.col("role").is_not_null()).group_by("pos", "role").agg(pl.len().alias("k"))
               .sort(["pos", "k", "role"], descending=[False, True, False]).unique("pos", keep="first"))
    for p, r in by_role.select("pos", "role").iter_rows():
        names[int(p)] = str(r)
    missing = [p for p, n in names.items() if not n]
    if missing and tokens is not None and {"example_id", "pos", "str_token"} <= set(tokens.columns):
        seen = rows.select("example_id", "pos").unique()
        common = (tokens.join(seen, on=["example_id", "pos"], how="semi").filter(pl.col("pos").is_in(missing))
                  .group_by("pos", "str_token").agg(pl.len().alias("k"))
                  .sort(["pos", "k", "str_token"], descending=[False, True, False]).unique("pos", keep="first"))
        for p, t in common.select("pos", "str_token").iter_rows():
            names[int(p)] = str(t).strip() or repr(str(t))
    return names


# --- heatmaps -----------------------------------------------------------------------------------

def position_heatmap(rows: pl.DataFrame, metric: str | None = None, value: str = "score", slots: str = "auto",
                     tokens: pl.DataFrame | None = None, answer: int | None = None,
                     title: str | None = None) -> alt.TopLevelMixin:
    """Mean `value` per layer (or head) and position of a 'layer,pos' / 'head,pos' sweep.

    One panel per metric, or only `metric`; x: positions by index or by role (see `position_slots`),
    y: layers, or heads 'L1H0' for head hooks. Rows of every answer are pooled unless `answer` is given.
    """
    what = "position_heatmap"
    rows = _select(rows, metric, answer, what)
    if not _has_positions(rows):
        raise InvalidParameterError(f"{what}: the sweep has no positions (grain without ',pos'); "
                                    "use head_heatmap or effect_bars")
    heads = _has_heads(rows)
    table, order = position_slots(with_value(rows, value, what), slots, tokens)
    table = table.with_columns(target=_target_expr(heads))
    keys = ["metric", "target", "layer", *(["head"] if heads else []), "slot"]
    summary = _summary(table, keys)
    if summary.height > MAX_CELLS:
        raise InvalidParameterError(f"{what}: {summary.height} cells (max {MAX_CELLS}); pick one metric or answer")
    metrics = _metrics(summary)
    vtitle = _value_title(value, metric or (metrics[0] if len(metrics) == 1 else None))
    y_order = _target_order(summary)
    y = alt.Y("target:N", sort=y_order, title="Head" if heads else "Layer")
    base = alt.Chart(summary).mark_rect().encode(
        x=alt.X("slot:N", sort=order, title="Position", axis=alt.Axis(labelAngle=-45)),
        y=y,
        color=_colour(summary, value, vtitle, len(metrics) > 1),
        tooltip=_tooltips(alt.Tooltip("target:N", title="Head" if heads else "Layer"),
                          alt.Tooltip("slot:N", title="Position"), title=vtitle),
    ).properties(width=max(style.CELL * len(order), 120), height=max(style.CELL * len(y_order), 60))
    chart = _faceted(base, metrics, value)
    name = f"{'Head' if heads else 'Layer'} x position: {vtitle}"
    return chart.properties(title=style.chart_title(title or name, _subtitle(vtitle, answer)))


def head_heatmap(rows: pl.DataFrame, metric: str | None = None, value: str = "score", answer: int | None = None,
                 title: str | None = None) -> alt.TopLevelMixin:
    """Mean `value` per attention head of a 'head' sweep (patch, ablate, atp, path_patch), layer x head;
    one panel per metric, or only `metric`."""
    what = "head_heatmap"
    rows = _select(rows, metric, answer, what)
    if not _has_heads(rows):
        raise InvalidParameterError(f"{what}: the sweep has no heads (a layer-level hook); use position_heatmap "
                                    "or effect_bars")
    if _has_positions(rows):
        raise InvalidParameterError(f"{what}: the sweep is per head and position; use position_heatmap")
    table = with_value(rows, value, what).with_columns(target=_target_expr(True))
    summary = _summary(table, ["metric", "target", "layer", "head"])
    metrics = _metrics(summary)
    vtitle = _value_title(value, metric or (metrics[0] if len(metrics) == 1 else None))
    n_heads = int(summary.get_column("head").max() or 0) + 1  # type: ignore[arg-type]
    n_layers = int(summary.get_column("layer").max() or 0) + 1  # type: ignore[arg-type]
    base = alt.Chart(summary).mark_rect().encode(
        x=alt.X("head:O", title="Head"),
        y=alt.Y("layer:O", title="Layer"),
        color=_colour(summary, value, vtitle, len(metrics) > 1),
        tooltip=_tooltips(alt.Tooltip("target:N", title="Head"), title=vtitle),
    ).properties(width=max(style.CELL * n_heads, 120), height=max(style.CELL * n_layers, 60))
    chart = _faceted(base, metrics, value)
    return chart.properties(title=style.chart_title(title or f"Heads: {vtitle}",
                                                    _subtitle(vtitle, answer)))


# --- bars ---------------------------------------------------------------------------------------

def _label_text(table: pl.DataFrame, col: str, generic: bool = False) -> pl.Expr:
    """A label column as text: booleans read 'col' / 'not col' (or 'yes' / 'no' when generic)."""
    if table.schema[col] == pl.Boolean:
        yes, no = ("yes", "no") if generic else (col, f"not {col}")
        return pl.when(pl.col(col)).then(pl.lit(yes)).otherwise(pl.lit(no))
    return pl.col(col).cast(pl.String).fill_null("none")


def _with_split(table: pl.DataFrame, examples: pl.DataFrame | None, group_by: str | Mapping[int, str],
                what: str) -> pl.DataFrame:
    """`table` plus `split`: the text of label `group_by` (or, per answer, of the mapped label column)."""
    cols = [group_by] if isinstance(group_by, str) else sorted(set(group_by.values()))
    if not cols:
        raise InvalidParameterError(f"{what}: the group_by mapping is empty")
    wanted = [c for c in cols if c not in table.columns]
    if wanted:
        if examples is None:
            raise InvalidParameterError(f"{what}: pass examples (store.examples) to split by {', '.join(wanted)}")
        require_columns(examples, ["example_id", *wanted], f"{what} (examples)")
        table = table.join(examples.select("example_id", *wanted), on="example_id", how="left",
                           maintain_order="left")
    if isinstance(group_by, str):
        return table.with_columns(split=_label_text(table, group_by))
    split = pl.lit("all")
    for idx, col in group_by.items():
        split = pl.when(pl.col("answer_idx") == idx).then(_label_text(table, col, generic=True)).otherwise(split)
    return table.with_columns(split=split)


def effect_bars(rows: pl.DataFrame, examples: pl.DataFrame | None = None,
                group_by: str | Mapping[int, str] | None = None, metric: str | None = None, value: str = "effect",
                answer: int | None = None, top: int | None = TOP, facet_answers: bool = True,
                label_title: str | None = None, title: str | None = None) -> alt.TopLevelMixin:
    """Mean `value` per target (head, or layer) with 95% intervals, split by a label.

    The seed's ablation chart: `effect_bars(ablate_rows, store.examples, {i: f'carry_{i}' ...})`
    draws each head's mean ablation effect (value - clean) on each answer digit, split by whether
    that digit receives a carry. group_by: a label column of `examples`, or answer_idx -> column
    (answers missing from the mapping read 'all'); None: no split. metric: default the sweep's
    first. One panel per answer where there are 2..12 (and facet_answers), else answers pooled.
    With `examples`, logit_diff rows of answers without a counterfactual are left out (`drop_degenerate`).
    `top` keeps the targets with the largest mean |value| (positions, if any, are pooled).
    """
    what = "effect_bars"
    rows = _select(drop_degenerate(rows, examples), metric, answer, what)
    metric = metric or _metrics(rows)[0]
    rows = rows.filter(pl.col("metric") == metric)
    heads = _has_heads(rows)
    table = with_value(rows, value, what).with_columns(target=_target_expr(heads))
    split_keys: list[str] = []
    split_title = label_title
    if group_by is not None:
        table = _with_split(table, examples, group_by, what)
        check_split(table, "split", group_by if isinstance(group_by, str) else (label_title or "label"), what)
        split_keys = ["split"]
        split_title = label_title or (group_by if isinstance(group_by, str) else "label")
    answers = sorted(table.get_column("answer_idx").unique().to_list())
    facet = facet_answers and answer is None and 1 < len(answers) <= MAX_FACETS
    if facet:
        table = table.with_columns(answer=pl.format("answer {}", pl.col("answer_idx")))
    keys = [*(["answer"] if facet else []), *split_keys, "target", "layer", *(["head"] if heads else [])]
    summary = _summary(table, keys)
    order = _target_order(summary)
    if top is not None and len(order) > top:
        size = (_summary(table, ["target"]).with_columns(size=pl.col("mean").abs())
                .sort(["size", "target"], descending=[True, False], nulls_last=True))
        keep = set(size.get_column("target").head(top).to_list())
        order = [t for t in order if t in keep]
        summary = summary.filter(pl.col("target").is_in(order))
    vtitle = _value_title(value, metric)
    kind = "Head" if heads else "Layer"
    x = alt.X("target:N", sort=order, title=kind, axis=alt.Axis(labelAngle=-45))
    tips = [alt.Tooltip("target:N", title=kind), *([alt.Tooltip("split:N", title=split_title)] if split_keys else []),
            style.value_tooltip("mean", f"mean {vtitle}"), style.value_tooltip("ci_low", "95% CI low"),
            style.value_tooltip("ci_high", "95% CI high"), alt.Tooltip("n:Q", title="rows (example x answer)")]
    enc: dict[str, Any] = {"x": x, "y": alt.Y("mean:Q", title=f"mean {vtitle}"), "tooltip": tips}
    err: dict[str, Any] = {"x": x, "y": alt.Y("ci_low:Q", title=f"mean {vtitle}"), "y2": alt.Y2("ci_high:Q")}
    if split_keys:
        enc["xOffset"] = err["xOffset"] = alt.XOffset("split:N")
        enc["color"] = alt.Color("split:N", title=split_title)
    else:
        enc["color"] = style.diverging("mean", f"mean {vtitle}", summary.get_column("mean"))
    bars = alt.Chart().mark_bar().encode(**enc)
    whiskers = alt.Chart().mark_errorbar(ticks=True).encode(**err)
    per = 18 * (2 if split_keys else 1)
    sub = _subtitle(vtitle, answer if answer is not None or not facet else -1)
    sub += "; 95% CI" + (f"; top {top} by |mean|" if top is not None and len(order) >= top else "")
    name = title or f"{kind}s: {vtitle}" + (f", split by {split_title}" if split_keys else "")
    if facet:
        inner = alt.layer(bars, whiskers).properties(width=min(max(220, per * len(order)), 700), height=200)
        chart = inner.facet(facet=alt.Facet("answer:N", title=None), columns=2, data=summary)
        return chart.properties(title=style.chart_title(name, sub))
    layered = alt.layer(bars, whiskers, data=summary)
    width = min(max(style.PLOT_WIDTH, per * len(order)), 1400)
    return layered.properties(width=width, height=style.PLOT_HEIGHT, title=style.chart_title(name, sub))


# --- attribution vs exact -----------------------------------------------------------------------

def atp_scatter(atp_rows: pl.DataFrame, exact_rows: pl.DataFrame, metric: str | None = None,
                title: str | None = None) -> alt.TopLevelMixin:
    """Per-target mean metric (over examples and answers) estimated by attribution patching against
    exact patching of the same hook and grain, with the y = x line; the subtitle gives Spearman's rank
    correlation (`actstore.query.interventions.agreement`)."""
    what = "atp_scatter"
    atp_rows = _select(atp_rows, metric, None, what)
    exact_rows = _select(exact_rows, metric, None, what)
    stats = agreement(atp_rows, exact_rows, metric)
    metric = str(stats["metric"])
    keys = ["layer", "head", "pos"]

    def per_target(t: pl.DataFrame, name: str) -> pl.DataFrame:
        t = t.filter(pl.col("metric") == metric)
        return t.group_by(keys).agg(pl.col("value").cast(pl.Float64).mean().alias(name))

    both = per_target(atp_rows, "atp").join(per_target(exact_rows, "exact"), on=keys, nulls_equal=True)
    if both.height == 0:
        raise InvalidParameterError(f"{what}: the two sweeps share no target")
    heads = both.get_column("head").null_count() < both.height
    both = both.with_columns(target=pl.concat_str(
        _target_expr(heads), pl.when(pl.col("pos").is_not_null()).then(pl.format(" @{}", pl.col("pos")))
        .otherwise(pl.lit("")))).sort(keys, nulls_last=False)
    if both.height > MAX_CELLS:
        raise InvalidParameterError(f"{what}: {both.height} targets (max {MAX_CELLS})")
    lo = float(min(both.get_column("atp").min(), both.get_column("exact").min()))  # type: ignore[arg-type,type-var]
    hi = float(max(both.get_column("atp").max(), both.get_column("exact").max()))  # type: ignore[arg-type,type-var]
    mname = METRIC_TITLES.get(metric, metric)
    points = alt.Chart().mark_circle(size=40, opacity=0.8).encode(
        x=alt.X("exact:Q", title=f"exact patching: mean {mname}"),
        y=alt.Y("atp:Q", title=f"attribution patching: mean {mname}"),
        color=alt.Color("layer:O", title="Layer"),
        tooltip=[alt.Tooltip("target:N", title="Target"), style.value_tooltip("exact", "exact"),
                 style.value_tooltip("atp", "attribution")],
    )
    diagonal = alt.Chart().mark_rule(color="#999", strokeDash=[4, 4]).encode(
        x=alt.datum(lo, type="quantitative"), y=alt.datum(lo, type="quantitative"), x2=alt.datum(hi),
        y2=alt.datum(hi))
    rho = stats["spearman"]
    sub = f"{both.height} targets; Spearman rank correlation " + (f"{rho:.3f}" if rho is not None else "n/a")
    chart = alt.layer(diagonal, points, data=both).properties(width=style.PLOT_HEIGHT, height=style.PLOT_HEIGHT)
    return chart.properties(title=style.chart_title(title or f"Attribution vs exact patching: {mname}", sub))


# --- one chart per sweep ------------------------------------------------------------------------

def sweep_title(sweep: Mapping[str, Any]) -> str:
    """'Activation patching of resid_pre (layer,pos), denoise' from a row of `sweeps(store)`."""
    kind = str(sweep.get("kind"))
    text = f"{KIND_TITLES.get(kind, kind)} of {sweep.get('hook')} ({sweep.get('grain')})"
    if kind == "path_patch" and sweep.get("receivers"):
        recv = str(sweep["receivers"])
        text += f" into {recv}" + (f" ({sweep['receiver_input']})" if sweep.get("receiver_input") else "")
    if kind == "ablate":
        method = sweep.get("method")
        text += f", {method}" + (f" over {sweep['mean_over']}" if method == "mean" and sweep.get("mean_over") else "")
    elif sweep.get("mode"):
        text += f", {sweep['mode']}"
    if sweep.get("pos"):
        text += f", positions {sweep['pos']}"
    return text


def sweep_slots(sweep: Mapping[str, Any]) -> str:
    """'role' where the sweep addressed its positions by role names, 'pos' otherwise."""
    pos = sweep.get("pos")
    if not pos:
        return "pos"
    items = [p.strip() for p in str(pos).split(",")]
    return "role" if all(not p.lstrip("-").isdigit() for p in items) else "pos"


def first_metric(sweep: Mapping[str, Any], rows: pl.DataFrame) -> str:
    """The sweep's first declared metric that its rows hold."""
    declared = [m for m in str(sweep.get("metrics") or "").split(",") if m]
    present = set(_metrics(rows))
    for m in declared:
        if m in present:
            return m
    return _metrics(rows)[0]


def sweep_chart(rows: pl.DataFrame, sweep: Mapping[str, Any], examples: pl.DataFrame | None = None,
                tokens: pl.DataFrame | None = None, split: str | Mapping[int, str] | None = None,
                split_title: str | None = None, metric: str | None = None) -> alt.TopLevelMixin:
    """The chart of one sweep (`rows` of `interventions(store, sweep)`, `sweep` its row of `sweeps(store)`).

    examples (store.examples) drops the logit_diff rows of answers without a counterfactual
    (`drop_degenerate`) and holds the `split` label; tokens (store.tokens) names positions.
    ',pos' grains: position_heatmap; 'head': head_heatmap, except an ablation with a `split` label,
    drawn as effect_bars split by it; 'layer': effect_bars. Ablations chart the effect value - clean,
    the others the normalised score; of the sweep's first metric unless `metric` is given.
    """
    if rows.height == 0:
        raise InvalidParameterError(f"sweep {sweep.get('sweep')} has no rows")
    kind, grain = str(sweep.get("kind")), str(sweep.get("grain"))
    rows = drop_degenerate(rows, examples)
    metric = metric or first_metric(sweep, rows)
    value = default_value(kind)
    if value == "score" and normalised(rows.filter(pl.col("metric") == metric)).get_column("score").is_null().all():
        value = "effect"  # no corrupted run to normalise by
    title = sweep_title(sweep)
    if grain.endswith(",pos"):
        return position_heatmap(rows, metric=metric, value=value, slots=sweep_slots(sweep), tokens=tokens,
                                title=title)
    if grain == "head" and not (kind == "ablate" and split is not None):
        return head_heatmap(rows, metric=metric, value=value, title=title)
    return effect_bars(rows, examples, group_by=split if kind == "ablate" else None, metric=metric, value=value,
                       label_title=split_title, title=title)


def atp_pairs(sweeps: pl.DataFrame) -> list[tuple[str, str]]:
    """(atp sweep, exact patch sweep) pairs of complete sweeps with the same hook, grain, mode,
    positions and examples: the ones an `atp_scatter` compares."""
    keys = ["hook", "grain", "mode", "pos", "start", "stop"]
    done = sweeps.filter(pl.col("complete"))
    atp = done.filter(pl.col("kind") == "atp")
    exact = done.filter(pl.col("kind") == "patch")
    both = atp.select("sweep", *keys).join(exact.select(pl.col("sweep").alias("exact"), *keys), on=keys,
                                           nulls_equal=True)
    pairs = both.sort("sweep", "exact").unique("sweep", keep="first", maintain_order=True)
    return [(str(a), str(b)) for a, b in pairs.select("sweep", "exact").iter_rows()]


def sweep_order(sweeps: pl.DataFrame) -> pl.DataFrame:
    """Sweeps in reading order: patching, path patching, attribution, ablation; then hook, grain, id."""
    rank = {k: i for i, k in enumerate(KIND_TITLES)}
    return (sweeps.with_columns(_rank=pl.col("kind").replace_strict(rank, default=len(rank), return_dtype=pl.Int64))
            .sort("_rank", "hook", "grain", "sweep").drop("_rank"))


__all__ = ["atp_pairs", "atp_scatter", "default_value", "drop_degenerate", "effect_bars", "first_metric",
           "head_heatmap", "position_heatmap", "position_slots", "sweep_chart", "sweep_order", "sweep_slots",
           "sweep_title", "with_value"]

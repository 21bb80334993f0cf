"""Charts of probes and principal components: the tables of `actstore.query.probes` and `.pca`.

    pca_scatter(scores, variance, color=None, title=...)   pc1 vs pc2, one point per example
    probe_accuracy(table)                                   test accuracy per hook, one line per label
    chart_pca(store, layer=None, pos=None, color=None)     the `actstore chart pca` kind

Builders only: the tables come from the query functions, and at most MAX_POINTS points are
embedded (more are sampled with a fixed seed).
"""

from __future__ import annotations

import altair as alt
import polars as pl

from actstore.charts import style
from actstore.charts.defaults import default_color, task_spec
from actstore.charts.tables import require_columns
from actstore.errors import InvalidParameterError
from actstore.query.pca import default_hook, pca
from actstore.query.probe_data import hook_layer, probe_hooks
from actstore.store.reader import Store

MAX_POINTS = 4500     # points in one chart; more are sampled with a fixed seed
MAX_NOMINAL = 10      # a colour label with more distinct values is drawn as a continuous scale


def pca_scatter(scores: pl.DataFrame, variance: pl.DataFrame, color: str | None = None,
                title: str = "Principal components") -> alt.Chart:
    """pc1 against pc2 of a `pca(...)` result, coloured by the label column `color` of `scores`.

    Axis titles give each component's share of the variance (from `variance`). A colour label with
    at most MAX_NOMINAL values (or not numeric) is drawn as categories, else on a continuous scale.
    """
    require_columns(scores, ["example_id", "pc1", "pc2"], "pca_scatter")
    require_columns(variance, ["component", "ratio"], "pca_scatter (variance)")
    if color is not None:
        require_columns(scores, [color], "pca_scatter")
    share = dict(zip(variance.get_column("component").to_list(), variance.get_column("ratio").to_list()))
    table = scores.select("example_id", "pc1", "pc2", *([color] if color else []))
    if table.height > MAX_POINTS:
        table = table.sample(n=MAX_POINTS, seed=0, shuffle=False)
    tooltip = [alt.Tooltip("example_id:Q", title="example"), style.value_tooltip("pc1", "PC1"),
               style.value_tooltip("pc2", "PC2")]

    def axis(j: int) -> str:
        return f"PC{j} ({share[j]:.1%} of variance)" if j in share else f"PC{j}"

    enc: dict = {"x": alt.X("pc1:Q", title=axis(1)), "y": alt.Y("pc2:Q", title=axis(2)), "tooltip": tooltip}
    if color is not None:
        column = scores.get_column(color)
        nominal = not column.dtype.is_numeric() or column.dtype == pl.Boolean or column.n_unique() <= MAX_NOMINAL
        enc["color"] = (alt.Color(f"{color}:N", title=style.title_of(color)) if nominal else
                        alt.Color(f"{color}:Q", title=style.title_of(color), scale=alt.Scale(scheme="viridis")))
        tooltip.append(alt.Tooltip(f"{color}:{'N' if nominal else 'Q'}", title=color))
    n = scores.height
    subtitle = f"one point per example ({f'{MAX_POINTS} of {n}, sampled' if n > MAX_POINTS else n})"
    return alt.Chart(table).mark_circle(size=22, opacity=0.6).encode(**enc).properties(
        width=style.PLOT_WIDTH, height=style.PLOT_HEIGHT, title=style.chart_title(title, subtitle))


def probe_accuracy(table: pl.DataFrame) -> alt.FacetChart:
    """Test accuracy of each probe by hook (in table order), one line per label, one panel per position;
    dashed: the majority-class baseline."""
    require_columns(table, ["hook", "pos", "label", "test_acc", "train_acc", "baseline"], "probe_accuracy")
    if table.height == 0:
        raise InvalidParameterError("probe_accuracy: the probe table is empty")
    if table.height > MAX_POINTS // 2:
        raise InvalidParameterError(f"probe_accuracy: {table.height} probes are too many for one chart "
                                    f"(max {MAX_POINTS // 2}); probe fewer hooks or positions")
    hooks = table.get_column("hook").unique(maintain_order=True).to_list()
    positions = table.get_column("pos").unique(maintain_order=True).to_list()
    data = table.select("hook", "pos", "label", "train_acc", "test_acc", "baseline")
    tooltip = [alt.Tooltip("hook:N"), alt.Tooltip("pos:N"), alt.Tooltip("label:N"),
               style.value_tooltip("test_acc", "test accuracy"), style.value_tooltip("train_acc", "train accuracy"),
               style.value_tooltip("baseline", "majority baseline")]
    x = alt.X("hook:N", sort=hooks, title="Hook", axis=alt.Axis(labelAngle=-40, labelLimit=220))
    y = alt.Scale(domain=[0, 1])
    lines = alt.Chart().mark_line(point=True).encode(
        x=x, y=alt.Y("test_acc:Q", title="Test accuracy", scale=y), color=alt.Color("label:N", title="Label"),
        tooltip=tooltip)
    base = alt.Chart().mark_line(strokeDash=[4, 3], opacity=0.6).encode(
        x=x, y=alt.Y("baseline:Q", scale=y), color=alt.Color("label:N"))
    return alt.layer(lines, base, data=data).properties(width=max(200, 40 * len(hooks)), height=220).facet(
        facet=alt.Facet("pos:N", sort=positions, title="Position"), columns=3).properties(
        title=style.chart_title("Linear probe accuracy", "held-out examples; dashed: always the commonest class"))


def chart_pca(store: Store, layer: int | None = None, pos: int | str | None = None, color: str | None = None,
              **_: object) -> alt.Chart:
    """pc1 vs pc2 of the probe's default hook of `layer` (its deepest residual hook, else its hook_z; default:
    the deepest overall) at `pos` (default: the first answer position), coloured by `color` (default: the
    task's neuron-scatter colour, else its first accuracy label)."""
    if layer is None:
        hook = default_hook(store)
    else:
        hooks = [h for h in probe_hooks(store) if hook_layer(h) == layer]
        if not hooks:
            raise InvalidParameterError(f"store {store.path} holds no residual hook or hook_z of layer {layer}")
        hook = hooks[-1]
    if color is None:
        ex = store.examples.columns
        color = default_color(store) or next((c for c in task_spec(store).accuracy if c in ex), None)
    result = pca(store, hook, pos, k=2, color=color)
    return pca_scatter(result.scores, result.variance, color, f"Principal components of {hook} at pos {result.pos}")


__all__ = ["chart_pca", "pca_scatter", "probe_accuracy"]

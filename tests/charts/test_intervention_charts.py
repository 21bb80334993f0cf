"""Charts of stored intervention sweeps: the numbers they draw equal means computed here with Polars
from the stored rows, each grain gets its chart, and the report gets an "Interventions" section
that renders in headless chromium (only where the store has complete sweeps)."""

from __future__ import annotations

import math
import re
import shutil

import numpy as np
import polars as pl
import pytest
from browser_check import assert_all_rendered, need_chromium, render
from chart_spec import chart_rows, find_key

import actstore
from actstore.charts import atp_scatter, effect_bars, head_heatmap, position_heatmap, sweep_chart
from actstore.charts.interventions import drop_degenerate, position_slots, sweep_order, sweep_title
from actstore.charts.report import build_report, interventions_section
from actstore.errors import InvalidParameterError
from actstore.query import interventions as iq
from actstore.query.breakdown import t975
from actstore.store.sweeps import ROW_SCHEMA

N = 32  # examples per sweep


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """64 addition examples through the zoo model; patching of resid_pre per layer and position, mean
    ablation of each head, and attribution vs exact patching of each head (16 examples)."""
    from actstore.interventions import ablate, attribution_patch, patch

    root = tmp_path_factory.mktemp("sweeps")
    st = actstore.ingest("addition", "zoo:addition", 64, 0, root / "s", quiet=True)
    patch(st, "resid_pre", "layer,pos", examples=N)
    ablate(st, "z", "head", method="mean", examples=N)
    patch(st, "z", "head", examples=16)
    attribution_patch(st, "z", "head", examples=16)
    return st


def _sweep(store, kind: str, grain: str) -> tuple[dict, pl.DataFrame]:
    row = next(r for r in iq.sweeps(store).iter_rows(named=True) if r["kind"] == kind and r["grain"] == grain)
    return row, iq.interventions(store, row["sweep"])


def _scores(rows: pl.DataFrame) -> pl.DataFrame:
    """(value - corrupted) / (clean - corrupted), computed here; rows where clean == corrupted dropped."""
    return rows.filter(pl.col("clean") != pl.col("corrupted")).with_columns(
        s=(pl.col("value").cast(pl.Float64) - pl.col("corrupted").cast(pl.Float64))
        / (pl.col("clean").cast(pl.Float64) - pl.col("corrupted").cast(pl.Float64)))


def test_position_heatmap_cells_are_mean_scores(store):
    _, rows = _sweep(store, "patch", "layer,pos")
    want = _scores(rows).group_by("metric", "layer", "pos").agg(pl.col("s").mean(), pl.len().alias("n"))
    want = {(m, lay, p): (s, n) for m, lay, p, s, n in want.iter_rows()}
    chart = position_heatmap(rows)  # every metric, one panel each
    cells = chart_rows(chart)
    assert len(cells) == 4 * 2 * 14  # metrics x layers x positions: aggregated, no raw rows
    for c in cells:
        pos = int(c["slot"].split(":")[0])
        s, n = want[(c["metric"], int(c["target"][1:]), pos)]
        assert c["mean"] == pytest.approx(s, rel=1e-9, abs=1e-12), c
        assert c["n"] == n
    spec = chart.to_dict()
    assert spec["facet"]["column"]["field"] == "metric"
    assert spec["spec"]["encoding"]["y"]["sort"] == ["L0", "L1"]
    # positions in index order, each labelled by its role (addition: a0..a3 + b0..b3 = c0..c3)
    order = spec["spec"]["encoding"]["x"]["sort"]
    assert order[:5] == ["0: a0", "1: a1", "2: a2", "3: a3", "4: +"] and order[9] == "9: =" and len(order) == 14


def test_position_heatmap_of_one_metric_and_answer(store):
    _, rows = _sweep(store, "patch", "layer,pos")
    chart = position_heatmap(rows, metric="logit_diff", answer=1)
    cells = chart_rows(chart)
    want = (_scores(rows.filter(pl.col("metric") == "logit_diff", pl.col("answer_idx") == 1))
            .group_by("layer", "pos").agg(pl.col("s").mean()))
    want = {(lay, p): s for lay, p, s in want.iter_rows()}
    assert len(cells) == 2 * 14 and "facet" not in chart.to_dict()
    for c in cells:
        assert c["mean"] == pytest.approx(want[(int(c["target"][1:]), int(c["slot"].split(":")[0]))], abs=1e-9)
    # patching resid_pre of layer 0 at the changed operand digit restores the clean run for that digit
    top = max(cells, key=lambda c: c["mean"] or -math.inf)
    assert top["mean"] > 0.4
    colour = chart.to_dict()["encoding"]["color"]
    size = max(abs(c["mean"]) for c in cells if c["mean"] is not None)
    assert colour["scale"]["domain"] == pytest.approx([-size, size])


def test_position_heatmap_by_role(store):
    _, rows = _sweep(store, "patch", "layer,pos")
    chart = position_heatmap(rows, metric="logit_diff", slots="role")
    cells = chart_rows(chart)
    want = _scores(rows.filter(pl.col("metric") == "logit_diff")).group_by("layer", "role").agg(pl.col("s").mean())
    want = {(lay, r): s for lay, r, s in want.iter_rows()}
    assert {c["slot"] for c in cells} == {r for _, r in want}
    for c in cells:
        assert c["mean"] == pytest.approx(want[(int(c["target"][1:]), c["slot"])], abs=1e-9)
    assert chart.to_dict()["encoding"]["x"]["sort"][:4] == ["a0", "a1", "a2", "a3"]  # roles by mean position


def test_head_heatmap_of_ablation_effects(store):
    _, rows = _sweep(store, "ablate", "head")
    chart = head_heatmap(rows, metric="correct_logit", value="effect")
    cells = chart_rows(chart)
    want = (rows.filter(pl.col("metric") == "correct_logit")
            .group_by("layer", "head").agg((pl.col("value").cast(pl.Float64) - pl.col("clean")).mean().alias("e")))
    want = {(lay, h): e for lay, h, e in want.iter_rows()}
    assert len(cells) == len(want) == 2 * 3
    for c in cells:
        assert c["mean"] == pytest.approx(want[(c["layer"], c["head"])], rel=1e-9)
        assert c["target"] == f"L{c['layer']}H{c['head']}"
    enc = chart.to_dict()["encoding"]
    assert enc["x"]["field"] == "head" and enc["y"]["field"] == "layer"
    with pytest.raises(InvalidParameterError, match="no heads"):
        head_heatmap(_sweep(store, "patch", "layer,pos")[1])
    with pytest.raises(InvalidParameterError, match="metric 'nope' not in the sweep"):
        head_heatmap(rows, metric="nope")


def test_ablation_bars_split_by_carry(store):
    """The seed's analysis: each head's mean ablation effect on each sum digit, split by that digit's carry,
    with 95% Student t intervals; digits whose twin keeps the token (no logit difference) are left out."""
    _, rows = _sweep(store, "ablate", "head")
    split = {i: f"carry_{i}" for i in range(3)}
    chart = effect_bars(rows, store.examples, split, metric="logit_diff", top=None)
    bars = chart_rows(chart)
    ex = store.examples.select("example_id", "answer_tokens", "counter_tokens", *split.values())
    t = (rows.filter(pl.col("metric") == "logit_diff").join(ex, on="example_id")
         .with_columns(e=pl.col("value").cast(pl.Float64) - pl.col("clean"),
                       tok=pl.col("answer_tokens").list.get(pl.col("answer_idx")),
                       ctr=pl.col("counter_tokens").list.get(pl.col("answer_idx")))
         .filter(pl.col("tok") != pl.col("ctr"))
         .with_columns(carry=pl.when(pl.col("answer_idx") == 0).then(pl.col("carry_0"))
                       .when(pl.col("answer_idx") == 1).then(pl.col("carry_1")).otherwise(pl.col("carry_2"))))
    answers = sorted(t.get_column("answer_idx").unique().to_list())
    assert answers == [0, 1]  # the twins change the two leading digits only
    assert {b["answer"] for b in bars} == {f"answer {a}" for a in answers}
    assert len(bars) == len(answers) * 2 * 6
    for b in bars:
        a = int(b["answer"].split()[1])
        sel = t.filter(pl.col("answer_idx") == a, pl.col("carry") == (b["split"] == "yes"),
                       pl.format("L{}H{}", pl.col("layer"), pl.col("head")) == b["target"])
        e = sel.get_column("e").to_numpy()
        assert b["n"] == len(e) > 1
        assert b["mean"] == pytest.approx(e.mean(), rel=1e-6)
        half = t975(len(e) - 1) * e.std(ddof=1) / np.sqrt(len(e))
        assert b["ci_high"] - b["mean"] == pytest.approx(half, rel=1e-6, abs=1e-9)
        assert b["mean"] - b["ci_low"] == pytest.approx(half, rel=1e-6, abs=1e-9)
    spec = chart.to_dict()
    assert spec["facet"]["field"] == "answer"
    assert find_key(spec, "xOffset")[0]["field"] == "split"
    assert find_key(spec, "mark")[-1]["type"] == "errorbar"


def test_effect_bars_top_and_unsplit(store):
    _, rows = _sweep(store, "ablate", "head")
    chart = effect_bars(rows, metric="correct_logit", top=2, facet_answers=False)
    bars = chart_rows(chart)
    per = (rows.filter(pl.col("metric") == "correct_logit").group_by("layer", "head")
           .agg((pl.col("value").cast(pl.Float64) - pl.col("clean")).mean().alias("e"))
           .sort(pl.col("e").abs(), descending=True))
    keep = {f"L{lay}H{h}" for lay, h, _ in per.head(2).iter_rows()}
    assert {b["target"] for b in bars} == keep and len(bars) == 2
    for b in bars:
        assert b["mean"] == pytest.approx(per.filter(pl.format("L{}H{}", "layer", "head") == b["target"])["e"][0])


def test_drop_degenerate(store):
    _, rows = _sweep(store, "ablate", "head")
    kept = drop_degenerate(rows, store.examples)
    gone = rows.join(kept, on=["layer", "head", "example_id", "answer_idx", "metric"], how="anti")
    assert set(gone.get_column("metric").unique()) == {"logit_diff"}
    assert (gone.get_column("clean") == 0).all() and (gone.get_column("value") == 0).all()
    # the twin changes c1 always, c0 where carry_0 flips (not always: twin_carry_flipped), c2 and c3 never
    same = {i for i in range(4) if not store.examples.get_column(f"twin_differs_{i}").all()}
    assert {2, 3} <= same and 1 not in same
    assert set(gone.get_column("answer_idx").unique()) == same
    assert drop_degenerate(rows, None).height == rows.height


def test_atp_scatter_against_exact(store):
    _, atp = _sweep(store, "atp", "head")
    _, exact = _sweep(store, "patch", "head")
    chart = atp_scatter(atp, exact, metric="logit_diff")
    points = chart_rows(chart)
    assert len(points) == 6
    mean = {(lay, h): v for lay, h, v in (exact.filter(pl.col("metric") == "logit_diff").group_by("layer", "head")
                                          .agg(pl.col("value").cast(pl.Float64).mean())).iter_rows()}
    for p in points:
        assert p["exact"] == pytest.approx(mean[(p["layer"], p["head"])], rel=1e-9)
    rho = iq.agreement(atp, exact, "logit_diff")["spearman"]
    assert f"Spearman rank correlation {rho:.3f}" in chart.to_dict()["title"]["subtitle"]


def test_position_labels_from_tokens_and_roles():
    """Index slots read 'pos: role' (the most common role there), else the most common token; role slots
    where every row has a role and a role moves between examples (prompts of several templates)."""
    base = {"sweep": "s", "kind": "patch", "hook": "resid_pre", "layer": 0, "head": None, "answer_idx": 0,
            "metric": "logit_diff", "value": 1.0, "clean": 2.0, "corrupted": 0.0}
    rows = pl.DataFrame([
        {**base, "example_id": 0, "pos": 0, "role": None}, {**base, "example_id": 1, "pos": 0, "role": None},
        {**base, "example_id": 0, "pos": 1, "role": "S"}, {**base, "example_id": 1, "pos": 1, "role": "IO"},
        {**base, "example_id": 2, "pos": 1, "role": "S"}, {**base, "example_id": 2, "pos": 0, "role": None},
    ], schema=ROW_SCHEMA)
    tokens = pl.DataFrame({"example_id": [0, 1, 2], "pos": [0, 0, 0], "str_token": [" When", " When", " Then"]})
    out, order = position_slots(rows, "auto", tokens)
    assert order == ["0: When", "1: S"]
    out, order = position_slots(rows, "auto")
    assert order == ["0", "1: S"]
    moved = rows.with_columns(role=pl.when(pl.col("pos") == 0).then(pl.lit("END")).otherwise(pl.col("role")))
    moved = pl.concat([moved, moved.filter(pl.col("role") == "S").with_columns(pos=pl.lit(2, dtype=pl.Int64))])
    assert position_slots(moved, "auto")[1] == ["END", "IO", "S"]


def test_sweep_chart_picks_by_grain_and_kind(store):
    table = iq.sweeps(store)
    assert sweep_order(table).get_column("kind").to_list() == ["patch", "patch", "atp", "ablate"]
    for sweep in table.iter_rows(named=True):
        rows = iq.interventions(store, sweep["sweep"])
        spec = sweep_chart(rows, sweep, store.examples, store.tokens,
                           {i: f"carry_{i}" for i in range(3)}, "carry").to_dict()
        assert spec["title"]["text"] == sweep_title(sweep)
        marks = {m["type"] if isinstance(m, dict) else m for m in find_key(spec, "mark")}
        if sweep["kind"] == "ablate":
            assert marks == {"bar", "errorbar"} and "effect (value - clean)" in spec["title"]["subtitle"]
        else:
            assert marks == {"rect"} and "normalised score of logit difference" in spec["title"]["subtitle"]
    titles = {sweep_title(s) for s in table.iter_rows(named=True)}
    assert titles == {"Activation patching of resid_pre (layer,pos), denoise",
                      "Activation patching of z (head), denoise", "Attribution patching of z (head), denoise",
                      "Ablation of z (head), mean over pos"}


def test_report_section_renders(store, stores, tmp_path):
    path = build_report(store, tmp_path / "report-interventions.html")
    page = path.read_text()
    assert page.count("<h2>Interventions</h2>") == 1
    assert re.findall(r"<p class='note'>([^<]*)</p>", page) == []   # every sweep charted
    for title in ("Activation patching of resid_pre (layer,pos), denoise", "Ablation of z (head), mean over pos",
                  "Attribution patching of z (head), denoise: against exact patching"):
        assert f'"text":"{title}"' in page, title
    section = interventions_section(store)
    assert section is not None and len(section.more) == 5  # four sweeps and the AtP vs exact scatter
    assert interventions_section(stores("addition")) is None   # a store without sweeps: no section

    # an incomplete sweep is not charted
    copy = tmp_path / "copy"
    shutil.copytree(store.path, copy)
    for d in (copy / "interventions").iterdir():
        (d / "complete.json").unlink()
    assert interventions_section(actstore.open_store(copy)) is None

    need_chromium()
    r = render(path, "report-interventions")
    assert_all_rendered(r, min_charts=len(re.findall(r"<div class='chart'", page)))


def test_layer_grain_sweep_is_bars_and_notes_render():
    """A 'layer' sweep (no heads, no positions) is drawn as bars of the mean score per layer; a section's
    further charts may include notes in place of charts that could not be built."""
    from actstore.charts.page import Section, render_report

    rows = pl.DataFrame([
        {"sweep": "s", "kind": "patch", "hook": "resid_pre", "layer": layer, "head": None, "pos": None, "role": None,
         "example_id": e, "answer_idx": 0, "metric": "logit_diff", "value": v, "clean": 4.0, "corrupted": 0.0}
        for layer, values in ((0, [4.0, 2.0, 0.0]), (1, [1.0, 1.0, 1.0])) for e, v in enumerate(values)
    ], schema=ROW_SCHEMA)
    sweep = {"sweep": "s", "kind": "patch", "hook": "resid_pre", "grain": "layer", "mode": "denoise",
             "metrics": "logit_diff", "pos": None}
    chart = sweep_chart(rows, sweep)
    bars = {b["target"]: b for b in chart_rows(chart)}
    assert bars["L0"]["mean"] == pytest.approx(0.5) and bars["L1"]["mean"] == pytest.approx(0.25)
    assert bars["L0"]["n"] == 3
    page = render_report("t", {}, [Section("Interventions", "c", more=(chart, "sweep x: not charted: why"))])
    assert page.count("<div class='chart'") == 1 and "<p class='note'>sweep x: not charted: why</p>" in page

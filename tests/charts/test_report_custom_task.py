"""A task defined here, not in actstore, gets a full report from its `ReportSpec` alone.

`Sort2` ("x y > lo hi": the two digits in order) is registered, ingested through a tiny random
model built here, and reported on; no chart code knows it. Its label splits, its '>' -> x / y
attention and its neuron scatters appear, and their numbers equal averages computed from the
model's own forward pass.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, ClassVar

import numpy as np
import polars as pl
import pytest
import torch
from chart_spec import chart_rows

import actstore
from actstore.charts import standard
from actstore.charts.report import build_report, report_sections
from actstore.datasets import TASKS, LabelSplit, NeuronScatter, ReportSpec, RoleAttention, TaskData, register_task
from actstore.datasets.base import check_n_seed

GT = 10  # the '>' token; digits are their own tokens
N = 96


class Sort2:
    """`x y > lo hi`: answer 0 (read at '>') is min(x, y), answer 1 (read at lo) is max(x, y)."""

    name: ClassVar[str] = "sort2_test"

    @property
    def params(self) -> dict[str, Any]:
        return {}

    @property
    def vocab(self) -> list[str]:
        return [str(d) for d in range(10)] + [">"]

    @property
    def report(self) -> ReportSpec:
        return ReportSpec(
            splits=(
                LabelSplit("from_y_{answer}", "Copied from y or x", "Each answer split by whether it copies y.",
                           legend="copies y"),
                LabelSplit("swapped", "Attribution by swap", "Split by whether x > y."),
                LabelSplit("no_such_label", "Never shown", "A label the examples lack: the section is left out."),
            ),
            attention=(RoleAttention(">", "'>' -> x / y attention", "From '>' to the operands, split by swap.",
                                     key_roles=("x", "y", "nowhere"), split_by="swapped"),),
            neurons=NeuronScatter("gap", color="swapped"),
        )

    def generate(self, n: int, seed: int, tokenizer: Any = None) -> TaskData:
        check_n_seed(n, seed)
        rng = np.random.default_rng(seed)
        x, y = rng.integers(0, 10, size=(2, n))
        lo, hi = np.minimum(x, y), np.maximum(x, y)
        tokens = np.stack([x, y, np.full(n, GT), lo, hi], axis=1).astype(np.int64)
        labels = pl.DataFrame({"swapped": x > y, "gap": np.abs(x - y), "from_y_0": y < x, "from_y_1": y >= x})
        str_tokens = [[self.vocab[t] for t in row] for row in tokens.tolist()]
        return TaskData(
            task=self.name, params=self.params, seed=seed, tokens=tokens, lengths=np.full(n, 5),
            answer_pos=np.tile([2, 3], (n, 1)), answer_tokens=np.stack([lo, hi], axis=1),
            counter_tokens=np.stack([hi, lo], axis=1), roles=np.tile(["x", "y", ">", "lo", "hi"], (n, 1)),
            str_tokens=str_tokens, text=["".join(r) for r in str_tokens], labels=labels,
        )


@pytest.fixture(scope="module")
def sort2(tmp_path_factory):
    """(store, model) of Sort2, the task registered for the module's tests only."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    register_task(Sort2)
    try:
        cfg = HookedTransformerConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=16, n_ctx=8, d_vocab=11,
                                      act_fn="relu", normalization_type=None, seed=0, device="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = HookedTransformer(cfg).eval()
        store = actstore.ingest(Sort2.name, model, n=N, seed=3, out=tmp_path_factory.mktemp("sort2") / "s",
                                quiet=True, chunk=32)
        yield store, model
    finally:
        del TASKS[Sort2.name]


def _sections(store):
    return {s.title: s for s in report_sections(store)}


def test_report_has_the_sections_its_spec_declares(sort2, tmp_path):
    store, _ = sort2
    page = build_report(store, tmp_path / "sort2.html").read_text()
    titles = re.findall(r"<section id='s\d+'><h2>([^<]*)</h2>", page)
    assert titles == ["Accuracy by label", "Direct logit attribution per head",
                      "Direct logit attribution per component",
                      "Copied from y or x", "Attribution by swap", "&#x27;&gt;&#x27; -&gt; x / y attention",
                      "MLP 0 neurons vs gap", "MLP 1 neurons vs gap", "Average attention by token role", "Logit lens"]
    assert re.findall(r"<p class='note'>([^<]*)</p>", page) == []
    assert "against gap, coloured by swapped" in page   # the neuron scatter's declared x and colour


def test_chart_defaults_come_from_the_spec(sort2):
    store, _ = sort2
    assert standard.default_split(store) == ({0: "from_y_0", 1: "from_y_1"}, "copies y")
    assert standard.default_query_role(store) == ">"
    assert standard.default_x(store) == "gap"
    assert standard.default_target(store) == "diff"
    rows = chart_rows(standard.make_chart(store, "attention-roles"))
    assert {r["k_role"] for r in rows} == {"x", "y"}   # 'nowhere' is not a role of the store


def test_split_section_equals_the_models_head_attributions(sort2):
    """Answer i's bars are split by from_y_i: each mean is the head's direct logit difference
    (correct - counterfactual) averaged over the examples with that value, from the model's cache."""
    store, model = sort2
    data = Sort2().generate(N, seed=3)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor(data.tokens))
    unembed = model.W_U.detach().numpy()
    direction = unembed[:, data.answer_tokens] - unembed[:, data.counter_tokens]   # [d_model, example, answer]
    rows = chart_rows(_sections(store)["Copied from y or x"].chart)
    assert {r["answer"] for r in rows} == {"answer 0", "answer 1"}
    checked = 0
    for r in rows:
        head_match = re.fullmatch(r"L(\d)H(\d)", r["component"])
        if head_match is None:
            continue
        layer, head = (int(v) for v in head_match.groups())
        a = int(r["answer"].removeprefix("answer "))
        keep = data.labels.get_column(f"from_y_{a}").to_numpy() == (r["split"] == "yes")
        z = cache[f"blocks.{layer}.attn.hook_z"].numpy()[:, data.answer_pos[0, a], head]   # [example, d_head]
        dla = np.einsum("ed,dm,me->e", z, model.W_O[layer, head].detach().numpy(), direction[:, :, a])
        assert r["mean"] == pytest.approx(dla[keep].mean(), abs=2e-3)
        checked += 1
    assert checked == 2 * 2 * model.cfg.n_layers * model.cfg.n_heads   # answers x split values x heads


def test_attention_section_equals_the_models_pattern(sort2):
    """'>' -> x / y bars: the attention probability of each head from '>' (position 2) to x and y,
    averaged over the examples of each value of `swapped`."""
    store, model = sort2
    data = Sort2().generate(N, seed=3)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor(data.tokens))
    swapped = data.labels.get_column("swapped").to_numpy()
    rows = chart_rows(_sections(store)["'>' -> x / y attention"].chart)
    assert {r["k_role"] for r in rows} == {"x", "y"} and {r["split"] for r in rows} == {"true", "false"}
    assert len(rows) == 2 * 2 * model.cfg.n_layers * model.cfg.n_heads
    for r in rows:
        pattern = cache[f"blocks.{r['layer']}.attn.hook_pattern"].numpy()[:, r["head"], 2, "xy".index(r["k_role"])]
        keep = swapped == (r["split"] == "true")
        assert r["mean"] == pytest.approx(pattern[keep].mean(), abs=2e-3)
        assert r["n"] == keep.sum()

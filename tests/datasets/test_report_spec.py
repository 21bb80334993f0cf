"""Each task's ReportSpec, the task registry, and imports that run one way inside actstore.datasets."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path
from typing import ClassVar

import pytest

import actstore.datasets
from actstore.datasets import TASKS, LabelSplit, ReportSpec, get_task, register_task
from actstore.errors import InvalidParameterError

PACKAGE = Path(actstore.datasets.__file__).parent


def test_label_split_columns_per_answer_and_whole_example() -> None:
    columns = ["carry_0", "carry_2", "failure"]
    assert LabelSplit("carry_{answer}", "t", "c").columns(columns, n_answers=4) == {0: "carry_0", 2: "carry_2"}
    assert LabelSplit("carry_{answer}", "t", "c").columns(columns, n_answers=1) == {0: "carry_0"}
    assert LabelSplit("carry_{answer}", "t", "c").columns(["failure"], n_answers=4) is None
    assert LabelSplit("failure", "t", "c").columns(columns, n_answers=4) == "failure"
    assert LabelSplit("order", "t", "c").columns(columns, n_answers=4) is None


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_spec_names_labels_and_roles_the_task_makes(task: str) -> None:
    """A split's label and an attention's roles and label exist in the task's own examples."""
    t = get_task(task)
    data = t.generate(40, seed=5)
    spec = t.report
    assert isinstance(spec, ReportSpec)
    roles = set(data.roles.ravel().tolist())
    for split in spec.splits:
        assert split.columns(data.labels.columns, data.n_answers) is not None, split.label
    for att in spec.attention:
        assert att.query_role in roles
        assert att.key_roles is None or set(att.key_roles) <= roles
        assert att.split_by is None or att.split_by in data.labels.columns
    if spec.neurons is not None:
        assert spec.neurons.x in data.labels.columns and spec.neurons.color in data.labels.columns


def test_the_seed_tasks_declare_their_analyses() -> None:
    addition, brackets, ioi = get_task("addition").report, get_task("brackets").report, get_task("ioi").report
    assert [s.label for s in addition.splits] == ["carry_{answer}"]
    assert [(a.query_role, a.split_by) for a in addition.attention] == [("=", "carry_0")]
    assert [s.label for s in brackets.splits] == ["failure"] and brackets.neurons is not None
    assert (brackets.neurons.x, brackets.neurons.color) == ("open_proportion", "failure")
    assert [(a.query_role, a.key_roles) for a in ioi.attention] == [("END", ("IO", "S1", "S2"))]
    days, list_update = get_task("days").report, get_task("list_update").report
    assert days == ReportSpec(accuracy=("kind", "template", "offset"))  # no report sections, only eval splits
    assert list_update == ReportSpec(accuracy=("idx", "changed"))
    for name in ("addition", "brackets", "ioi", "days", "list_update"):  # every declared split is a real label
        data = get_task(name).generate(8, 0)
        assert set(get_task(name).report.accuracy) <= set(data.labels.columns), name


def test_register_task() -> None:
    class Toy:
        name: ClassVar[str] = "toy_registered"

        def __init__(self, size: int = 2) -> None:
            self.size = size

    class Other:
        name: ClassVar[str] = "toy_registered"

    class Nameless:
        pass

    try:
        assert register_task(Toy) is Toy and register_task(Toy) is Toy   # again: a no-op
        assert get_task("toy_registered", size=3).size == 3
        with pytest.raises(InvalidParameterError, match="bad parameter"):
            get_task("toy_registered", colour="red")
        with pytest.raises(InvalidParameterError, match="already registered"):
            register_task(Other)
        with pytest.raises(InvalidParameterError, match="already registered"):
            register_task(type("Clash", (), {"name": "addition"}))
    finally:
        del TASKS["toy_registered"]
    with pytest.raises(InvalidParameterError, match="no class attribute `name`"):
        register_task(Nameless)


def _imports(path: Path) -> tuple[set[str], list[str]]:
    """(actstore.datasets modules `path` imports at the top, every import nested in a function or class)."""
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("actstore.datasets"):
            names = [node.module] if node.module != "actstore.datasets" else [f"actstore.datasets.{a.name}"
                                                                              for a in node.names]
            top.update(n.removeprefix("actstore.datasets.") for n in names)
        elif isinstance(node, ast.Import):
            top.update(a.name.removeprefix("actstore.datasets.") for a in node.names
                       if a.name.startswith("actstore.datasets."))
    nested = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
              and not any(n is top_node for top_node in tree.body)]
    return top, nested


# the one import inside a function: the word tokenizer needs the model extra (tokenizers, transformers),
# and a reader-only install imports the text tasks for their labels and report specs
LAZY = {"templated": ["from actstore.datasets.wordtok import word_tokenizer"]}


def test_imports_run_one_way() -> None:
    """No module imports inside a function (but LAZY), and the module graph, LAZY's edges included,
    has no cycle (the package's __init__ only gathers the leaves)."""
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        top, nested = _imports(path)
        assert nested == LAZY.get(path.stem, []), f"{path.name} imports inside a function: {nested}"
        lazy = {line.split()[1].removeprefix("actstore.datasets.") for line in nested}
        graph[path.stem] = (top | lazy) - {path.stem}
    order = list(graphlib.TopologicalSorter(graph).static_order())   # raises CycleError on a cycle
    assert order.index("ioi_words") < order.index("wordtok") < order.index("templated") < order.index("ioi")
    assert order.index("days_words") < order.index("wordtok") < order.index("days")
    assert graph["wordtok"] == {"days_words", "ioi_words"}
    assert graph["ioi_words"] == graph["days_words"] == graph["report_spec"] == set()

"""The generators' vectorised blocks (this session's addition, list_update and brackets) must make the examples
the tree before them (f057bcc) made, bit for bit: tokens, lengths, answer positions and tokens, counterfactual
twins, labels, roles, str tokens, and the examples and tokens meta frames built from them, for several
parameters, seeds and ranges (one example, odd counts, ranges that start mid-block). The old tree is taken
from git (`git archive`) and both run in their own interpreter."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
BASE = "f057bcc"
DUMP = '''
import pickle, sys
import numpy as np
import actstore
from actstore.datasets import get_task
from actstore.datasets.base import generate_range
from actstore.ingest.meta import examples_frame, tokens_frame
out = {}
for name, params in [("addition", {}), ("addition", {"digits": 3}), ("list_update", {}), ("brackets", {}),
                     ("brackets", {"max_len": 2}), ("brackets", {"max_len": 40, "balanced_fraction": 0.0})]:
    task = get_task(name, **params)
    for seed in (0, 7):
        for start, stop in ((0, 1), (0, 3), (5, 6), (3, 40), (63, 130), (100, 357)):
            d = generate_range(task, start, stop, seed)
            rec = {k: (v.tolist(), str(v.dtype)) if isinstance(v, np.ndarray) else v for k, v in vars(d).items()}
            rec["labels"] = (d.labels.to_dicts(), str(d.labels.schema))
            rec["frames"] = [(f.to_dicts(), str(f.schema)) for f in (examples_frame(d, start), tokens_frame(d, start))]
            out[(name, str(params), seed, start, stop)] = rec
        out[(name, str(params), seed)] = vars(task.generate(5, seed))["tokens"].tolist()
pickle.dump((actstore.__file__, out), open(sys.argv[1], "wb"))
'''


def _dump(package_root: Path, out: Path) -> dict:
    subprocess.run([sys.executable, "-c", DUMP, str(out)], check=True, cwd=out.parent,
                   env={"PYTHONPATH": str(package_root), "PATH": "/usr/bin:/bin"}, timeout=300)
    with open(out, "rb") as f:
        source, examples = pickle.load(f)
    assert Path(source).is_relative_to(package_root)  # that tree's package, not the installed one
    return examples


@pytest.mark.slow  # two interpreters importing the package: ~20 s of CPU
def test_blocks_equal_the_tree_before(tmp_path):
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", BASE],
                                                     capture_output=True).returncode != 0:
        pytest.skip(f"no git history with {BASE} here")
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BASE, "actstore"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    want, got = _dump(old, tmp_path / "old.pkl"), _dump(REPO, tmp_path / "new.pkl")
    assert want.keys() == got.keys() and len(want) == 6 * 2 * 7
    assert [k for k in want if want[k] != got[k]] == []

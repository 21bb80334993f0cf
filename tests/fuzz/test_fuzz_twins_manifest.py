"""Hostile `twins` values in a store's manifest (zarr.json): every one is refused as one error line by the
reader and by an ingest that would resume or grow the store, and nothing is touched. An ingest asked for the
other twins setting refuses to resume or grow, whatever is committed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from helpers import tree_bytes  # noqa: E402
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.errors import ActstoreError, StoreExistsError  # noqa: E402
from actstore.store.commits import commit_path  # noqa: E402
from actstore.store.manifest import Manifest  # noqa: E402

KW = dict(hooks=["blocks.0.hook_resid_pre"], chunk=8, batch=8, quiet=True)


@pytest.fixture(scope="module")
def model():
    return tiny_model("addition")


@pytest.fixture(scope="module")
def off(model, tmp_path_factory) -> Path:
    """12 examples without the twins' pass, in a partial last chunk."""
    return actstore.ingest("addition", model, 12, 0, tmp_path_factory.mktemp("off") / "s", twins=False, **KW).path


def with_twins(src: Path, dest: Path, value: object) -> Path:
    """A copy of the store at `src` whose manifest's twins is `value` (deleted when value is ...)."""
    import shutil

    shutil.copytree(src, dest)
    doc = json.loads((dest / "zarr.json").read_text())
    if value is ...:
        doc["attributes"]["actstore"].pop("twins", None)
    else:
        doc["attributes"]["actstore"]["twins"] = value
    (dest / "zarr.json").write_text(json.dumps(doc))
    return dest


HOSTILE = {"yes": "yes", "false str": "false", "zero": 0, "one": 1, "null": None, "list": [], "dict": {},
           "float": 0.0, "huge": 10**30, "true": True, "absent": ...}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_an_edited_twins_field_is_one_line_and_never_read(model, off, tmp_path, name):
    root = with_twins(off, tmp_path / "s", HOSTILE[name])
    before = tree_bytes(root)
    with pytest.raises(ActstoreError) as e:
        store = actstore.open_store(root)
        store.outputs  # noqa: B018 - a reader that opened lazily must still refuse before any value
    text = str(e.value)
    assert text and "\n" not in text
    with pytest.raises(ActstoreError) as e2:
        actstore.ingest("addition", model, 12, 0, root, twins=False, **KW)
    assert "\n" not in str(e2.value)
    assert tree_bytes(root) == before


@pytest.mark.parametrize("value", [0, 1, None, "false", 0.0])
def test_manifest_twins_accepts_only_booleans(off, value):
    d = json.loads((off / "zarr.json").read_text())["attributes"]["actstore"]
    with pytest.raises(ActstoreError, match="twins"):
        Manifest.from_dict({**d, "twins": value})


@pytest.mark.parametrize("grow", [False, True])
def test_a_crashed_no_twins_ingest_refuses_a_twins_resume_and_resumes_its_own(model, off, tmp_path, grow):
    import shutil

    root = tmp_path / "s"
    shutil.copytree(off, root)
    (root / "_commits/complete.json").unlink()
    commit_path(root, 1).unlink()  # chunk 1 as a crash leaves it: files, no record
    before = tree_bytes(root)
    with pytest.raises(StoreExistsError, match="twins"):
        actstore.ingest("addition", model, 20 if grow else 12, 0, root, **KW)
    assert tree_bytes(root) == before
    store = actstore.ingest("addition", model, 12, 0, root, twins=False, **KW)
    assert tree_bytes(root) == tree_bytes(off) and store.manifest.twins is False


def test_a_no_twins_store_grows_into_the_direct_no_twins_store(model, off, tmp_path):
    import shutil

    root = shutil.copytree(off, tmp_path / "grown")
    grown = actstore.ingest("addition", model, 20, 0, root, twins=False, **KW)
    direct = actstore.ingest("addition", model, 20, 0, tmp_path / "direct", twins=False, **KW)
    data = {k: v for k, v in tree_bytes(grown.path).items() if not k.startswith("_commits")}
    assert data == {k: v for k, v in tree_bytes(direct.path).items() if not k.startswith("_commits")}
    assert grown.manifest.twins is False and grown.outputs["corrupted_logit_diff"].null_count() == grown.outputs.height

"""Manifest: round trip, validation, identity."""

from __future__ import annotations

import json

import pytest
from synthetic_store import synthetic_manifest

from actstore.errors import StoreFormatError
from actstore.store.manifest import FORMAT_VERSION, Manifest


def test_round_trip_through_json():
    m = synthetic_manifest()
    d = json.loads(json.dumps(m.to_dict()))
    assert Manifest.from_dict(d) == m
    assert d["format_version"] == FORMAT_VERSION and d["hooks"][0]["dims"] == ["example", "pos", "head", "d_head"]
    assert m.n_chunks == 3 and m.hook("blocks.0.attn.hook_z").shape == (10, 5, 2, 3) and m.hook("nope") is None


def test_identity_ignores_measured_and_version_fields():
    m = synthetic_manifest()
    assert m.differences(synthetic_manifest(decomposition={"status": "ok", "max_abs_error": 1e-7},
                                            package_version="9.9")) == []
    assert m.differences(synthetic_manifest(seed=3, chunk=2)) == ["chunk", "seed"]
    assert "hooks" in m.differences(synthetic_manifest(hooks=m.hooks[:1]))


@pytest.mark.parametrize("change, match", [
    (dict(format_version=99), "format version 99 is not supported"),
    (dict(n=0), "n must be a positive integer"),
    (dict(dtype="int8"), "dtype must be one of"),
    (dict(chunk=True), "chunk must be"),
])
def test_bad_manifests_are_refused(change, match):
    d = synthetic_manifest().to_dict() | change
    with pytest.raises(StoreFormatError, match=match):
        Manifest.from_dict(d)


def test_hooks_must_agree_with_n_and_positions():
    d = synthetic_manifest().to_dict()
    d["hooks"][0]["shape"][0] = 11
    with pytest.raises(StoreFormatError, match="first axis 11 differs from n=10"):
        Manifest.from_dict(d)
    d = synthetic_manifest().to_dict()
    d["hooks"][1]["positions"] = "last"
    with pytest.raises(StoreFormatError, match="positions must be one of"):
        Manifest.from_dict(d)
    d = synthetic_manifest().to_dict()
    del d["task"]
    with pytest.raises(StoreFormatError, match="lacks field"):
        Manifest.from_dict(d)
    with pytest.raises(StoreFormatError, match="must be a mapping"):
        Manifest.from_dict([1, 2])

"""Sweeps stored in the store, end to end through the API: an identical call is read back without
the model, sweeps are the SQL views `interventions` and `sweeps`, the normalised score means what it
says, a killed sweep resumes to the same bytes, and tampering is named on read and by verify."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from iv_helpers import model_of

from actstore.errors import StoreCorruptError
from actstore.interventions import ablate, patch
from actstore.query.interventions import interventions, normalised, sweeps
from actstore.store import open_store
from actstore.store.sweeps import SWEEPS, SweepWriter
from actstore.store.verify import verify


class Unusable:
    """A model that fails the test if anything touches it."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name!r}) on what should be a cache hit")


def sweep_files(root: Path) -> dict[str, bytes]:
    base = root / SWEEPS
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def test_a_second_identical_sweep_is_read_back_without_the_model(iv_fresh, tmp_path):
    path = iv_fresh("addition", tmp_path / "s")
    first = patch(path, "z", "head", examples=8)
    files = sweep_files(path)
    again = patch(open_store(path), "z", "head", examples=8, model=Unusable())
    assert again.equals(first)
    assert sweep_files(path) == files  # nothing rewritten
    mean = ablate(path, "z", "head", method="mean", mean_over="role", examples=8)
    assert ablate(path, "z", "head", method="mean", mean_over="role", examples=8, model=Unusable()).equals(mean)
    with pytest.raises(AssertionError, match="the model was used"):  # another sweep does need the model
        patch(path, "z", "head", examples=8, mode="noise", model=Unusable())
    assert len(sweeps(open_store(path))) == 2


def test_sweeps_are_the_sql_views_interventions_and_sweeps(iv_fresh, tmp_path):
    path = iv_fresh("addition", tmp_path / "s")
    rows = patch(path, "resid_pre", "layer,pos", examples=16)
    store = open_store(path)
    got = store.sql("SELECT carry_0, avg(value) AS v, count(*) AS n FROM interventions JOIN examples "
                    "USING (example_id) WHERE metric = 'logit_diff' GROUP BY carry_0 ORDER BY carry_0").pl()
    want = (rows.filter(pl.col("metric") == "logit_diff").join(store.examples.select("example_id", "carry_0"),
                                                                on="example_id")
            .group_by("carry_0").agg(pl.col("value").cast(pl.Float64).mean().alias("v"), pl.len().alias("n"))
            .sort("carry_0"))
    assert got["carry_0"].to_list() == want["carry_0"].to_list() and len(got) == 2
    assert got["n"].to_list() == want["n"].to_list()
    assert max(abs(a - b) for a, b in zip(got["v"], want["v"])) < 1e-4
    assert store.sql("SELECT count(*) FROM interventions").pl().item() == rows.height
    (sw,) = store.sql("SELECT sweep, kind, hook, grain, mode, start, stop, parts, committed, complete "
                      "FROM sweeps").pl().iter_rows(named=True)
    assert sw == {"sweep": rows["sweep"][0], "kind": "patch", "hook": "resid_pre", "grain": "layer,pos",
                  "mode": "denoise", "start": 0, "stop": 16, "parts": 1, "committed": 1, "complete": True}


def test_the_normalised_score_is_one_for_the_clean_run_and_zero_for_the_corrupted(iv_fresh, tmp_path):
    """Patching all of resid_pre at layer 0 (or resid_post at the last layer) is the source run
    itself: denoise gives the clean run (score 1), noise the corrupted one (score 0)."""
    path = iv_fresh("mlp", tmp_path / "s")
    net = model_of("mlp")
    store = open_store(path)
    last = store.arch.n_layers - 1
    for hook, layer in (("resid_pre", 0), ("resid_post", last)):
        for mode, want in (("denoise", 1.0), ("noise", 0.0)):
            rows = patch(store, hook, "layer", mode=mode, examples=8, model=net)
            sid = rows["sweep"][0]
            scored = normalised(rows).filter(pl.col("layer") == layer)
            wide = scored.filter((pl.col("clean") - pl.col("corrupted")).abs() > 0.1)
            assert wide.height > 0.5 * scored.height
            assert (wide["score"] - want).abs().max() < 1e-4
            by_sql = store.sql(f"SELECT example_id, answer_idx, metric, layer, (value - corrupted) / "
                               f"(clean - corrupted) AS s FROM interventions WHERE sweep = '{sid}' "
                               "AND clean <> corrupted").pl()
            both = by_sql.join(normalised(rows), on=["example_id", "answer_idx", "metric", "layer"])
            assert both.height == by_sql.height > 0
            assert (both["s"] - both["score"]).abs().max() < 1e-9
    # in between, layer by layer, the score is not trivially 0 or 1
    rows = normalised(patch(store, "attn_out", "layer", examples=8, model=net))
    assert rows.filter(pl.col("score").is_not_null())["score"].std() > 0.01


def test_a_killed_sweep_resumes_to_the_same_bytes(iv_fresh, tmp_path, monkeypatch):
    whole, killed = iv_fresh("addition", tmp_path / "whole"), iv_fresh("addition", tmp_path / "killed")
    args = dict(examples=12, part=4, batch=2)  # 3 parts of 2 batches
    want = patch(whole, "z", "head,pos", **args)
    write_part = SweepWriter.write_part

    def dies_at_part_1(self, k, rows):
        if k == 1:
            raise RuntimeError("killed while writing part 1")
        write_part(self, k, rows)

    monkeypatch.setattr(SweepWriter, "write_part", dies_at_part_1)
    with pytest.raises(RuntimeError, match="killed"):
        patch(killed, "z", "head,pos", **args)
    (info,) = sweeps(open_store(killed)).iter_rows(named=True)
    assert (info["parts"], info["committed"], info["complete"]) == (3, 1, False)
    assert interventions(open_store(killed)).height == 0  # only complete sweeps are rows
    written = []

    def counts(self, k, rows):
        written.append(k)
        write_part(self, k, rows)

    monkeypatch.setattr(SweepWriter, "write_part", counts)
    got = patch(killed, "z", "head,pos", **args)
    assert written == [1, 2]  # resumed after the committed part
    assert got.equals(want)
    assert sweep_files(killed) == sweep_files(whole)


KILLER = """
import os, signal, sys
import actstore.store.sweeps as sw
from actstore.interventions import patch
real = sw.atomic_write_bytes
def write(path, data):
    if path.name == "00001.json":  # part 1's file is written; die before its commit record
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, data)
sw.atomic_write_bytes = write
patch(sys.argv[1], "z", "head,pos", examples=12, part=4, batch=2)
"""


@pytest.mark.slow
def test_a_sigkilled_sweep_resumes_to_the_same_bytes(iv_fresh, tmp_path):
    whole, killed = iv_fresh("addition", tmp_path / "whole"), iv_fresh("addition", tmp_path / "killed")
    want = patch(whole, "z", "head,pos", examples=12, part=4, batch=2)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run([sys.executable, "-c", KILLER, str(killed)], env=env, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    sid = want["sweep"][0]
    assert (killed / SWEEPS / sid / "part-00001.parquet").exists()
    assert not (killed / SWEEPS / sid / "_commits" / "00001.json").exists()
    got = patch(killed, "z", "head,pos", examples=12, part=4, batch=2)
    assert got.equals(want)
    assert sweep_files(killed) == sweep_files(whole)


def flip_part(d: Path) -> str:
    p = d / "part-00000.parquet"
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0x10
    p.write_bytes(bytes(data))
    return "part-00000.parquet"


def delete_record(d: Path) -> str:
    (d / "_commits" / "00000.json").unlink()
    return "_commits/00000.json"


def edit_spec(d: Path) -> str:
    spec = json.loads((d / "spec.json").read_text())
    spec["batch"] += 1  # a plausible spec, not this sweep's
    (d / "spec.json").write_text(json.dumps(spec, sort_keys=True, indent=1) + "\n")
    return "spec.json"


def copy_under_another_id(d: Path) -> str:
    shutil.copytree(d, d.parent / "00000000deadbeef")
    return "00000000deadbeef"


@pytest.mark.parametrize("tamper", [flip_part, delete_record, edit_spec, copy_under_another_id])
def test_tampering_is_named_on_read_and_by_verify(iv_fresh, tmp_path, tamper):
    path = iv_fresh("addition", tmp_path / "s")
    rows = patch(path, "z", "head", examples=4)
    named = tamper(path / SWEEPS / rows["sweep"][0])
    for read in (lambda: patch(path, "z", "head", examples=4, model=Unusable()),
                 lambda: interventions(open_store(path)),
                 lambda: open_store(path).sql("SELECT count(*) FROM interventions").pl()):
        with pytest.raises(StoreCorruptError, match="sweep") as e:
            read()
        assert named in str(e.value)
    problems = verify(path).problems
    assert any(named in p for p in problems), problems


def test_a_stray_directory_under_interventions_is_a_verify_problem(iv_fresh, tmp_path):
    path = iv_fresh("addition", tmp_path / "s")
    rows = patch(path, "z", "head", examples=4)
    (path / SWEEPS / "my-notes").mkdir()
    assert interventions(open_store(path)).equals(rows)  # readers read sweeps only
    assert f"{SWEEPS}/my-notes is not a sweep directory" in verify(path).problems

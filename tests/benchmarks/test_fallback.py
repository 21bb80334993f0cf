"""benchmarks/fallback.py runs on the stores of a directory and says whether the numpy code gave the kernel's table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "query"))
from query_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.query import head_dot as hd  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


needs_kernel = pytest.mark.skipif(hd.KERNEL is None, reason="the C kernel is not built here (no C compiler)")


@needs_kernel
def test_it_times_both_paths_on_every_store_and_finds_the_same_table(tmp_path):
    for name, kind in (("mlp", "ln_mlp"), ("attn_only", "ln_attn")):
        actstore.ingest("addition", tiny_model(kind), 24, 0, tmp_path / name, chunk=8, quiet=True)
    (tmp_path / "not-a-store").mkdir()
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fallback.py"), "--dir", str(tmp_path),
                          "--repeats", "3"], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["attn_only", "mlp"]
    for line in lines:
        assert "target=diff" in line and "examples=24" in line and line.endswith("same_table=yes")
        kernel, numpy = map(float, re.search(r"kernel_ms=(\S+) numpy_ms=(\S+)", line).groups())
        assert kernel > 0 and numpy > 0


@needs_kernel
def test_it_says_when_the_directory_holds_no_store(tmp_path):
    got = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fallback.py"), "--dir", str(tmp_path)],
                         capture_output=True, text=True)
    assert got.returncode != 0 and "no store under" in got.stderr

"""docs/benchmarks.md's tables are what benchmarks/tables.py prints from the run log committed beside them."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tables_module():
    spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "benchmarks" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _page_log() -> Path:
    """The log the page names as its run's."""
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    return ROOT / re.search(r"`(benchmarks/runs/[^`]+\.log)`", page).group(1)


def test_every_table_on_the_page_is_printed_from_its_run_log():
    tables = _tables_module()
    got = tables.collect(_page_log().read_text().splitlines())
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert set(got) == set(tables.TABLES)  # the log holds a run of every benchmark the page shows
    for kind, make in tables.TABLES.items():
        assert make(got[kind]) in page, f"the page's {kind} table differs from the log's"


def test_a_value_is_read_from_its_key_with_its_unit_and_runs_side_by_side():
    tables = _tables_module()
    line = ("zoo:addition     task=addition    n=4096 chunk=4096 hooks=3 touched_MB=16.6 direct_MB/s=1764 "
            "direct_x_zarr=2.35 direct_s=0.0094 (median 0.0120) dla_s=0.0122 read_ratio=0.77 (of medians 0.78) "
            "threads_gain=1.52")
    got = tables.collect([line, line.replace("read_ratio=0.77", "read_ratio=0.81")])
    runs = got["reads"]["zoo:addition"]
    assert runs[0]["direct_MB/s"] == "1764" and runs[0]["read_ratio"] == "0.77"
    assert tables.cell(runs, "read_ratio") == "0.77 / 0.81"
    assert tables.cell(runs, "dla_s", " s") == "0.0122 s / 0.0122 s"
    assert tables.cell(runs, "zarrs_x_zarr") == "-"  # a reader that did not run


def test_a_fallback_line_is_its_own_table_row_keyed_by_store():
    tables = _tables_module()
    line = ("zoo_addition         target=diff    examples=4096 kernel_ms=6.0 numpy_ms=13.6 numpy_over_kernel=2.26 "
            "same_table=yes")
    got = tables.collect([line, line.replace("kernel_ms=6.0", "kernel_ms=5.8")])
    assert set(got) == {"fallback"}
    row = tables.fallback_table(got["fallback"]).splitlines()[2]
    assert row == ("| zoo_addition | diff / diff | 4096 / 4096 | 6.0 ms / 5.8 ms | 13.6 ms / 13.6 ms | **2.26 / 2.26** "
                   "| yes / yes |")

"""The Markdown tables of docs/benchmarks.md, from the output of the benchmarks that fill them.

Reads one or more logs (stdout of benchmarks/ingest.py, reads.py, fallback.py, query.py and ingest_setup.py, in any
order and mixed; other lines are ignored) and prints one table per benchmark, every cell copied from a printed
`key=value` (a benchmark run twice gives each run's value, ` / `-joined in log order), so the page's figures can
be checked against the run that made them:

    python benchmarks/tables.py LOG [LOG ...]
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

MODELS = ("gpt2-small-shape", "zoo:addition", "zoo:list_update", "zoo:brackets", "zoo:lm")
SHORT = {"gpt2-small-shape": "GPT-2 shape", "zoo:addition": "addition", "zoo:list_update": "list_update",
         "zoo:brackets": "brackets", "zoo:lm": "lm"}
_PAIR = re.compile(r"([A-Za-z_+0-9/]+)=(\S+)")


def fields(line: str) -> dict[str, str]:
    """{key: value} of a benchmark line's `key=value` tokens (a unit suffix such as 's' kept)."""
    return dict(_PAIR.findall(line))


def collect(lines: list[str]) -> dict[str, dict[str, list[dict[str, str]]]]:
    """{kind: {row key: [fields of each run]}}, kinds: ingest, hook, reads, fallback, query, setup."""
    out: dict[str, dict[str, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))
    setup_head: str | None = None
    for line in lines:
        head = line.split(" ", 1)[0]
        model = head.split("(")[0]  # reads.py and query.py label untrained zoo models 'zoo:NAME(untrained)'
        f = fields(line)
        if "numpy_over_kernel" in f:  # fallback.py: one line per store directory
            out["fallback"][head].append(f)
        elif model in MODELS and "hooks" in f and "bare_forward_s" in f:
            out["ingest"][head].append(f)
        elif model in MODELS and "hook" in f and "whole_actstore_s" in f:
            out["hook"][f"{head} {f['hook']}"].append(f)
        elif model in MODELS and "tl_s" in f:  # query.py prints read_ratio too: before reads
            out["query"][head].append(f)
        elif model in MODELS and "touched_MB" in f and "read_ratio" in f:
            out["reads"][head].append(f)
        elif "tree=" in line and "n=" in line:  # ingest_setup.py's model line; its options (a dict) if any
            options = line[line.index("{"):line.index("}") + 1] if "{" in line else ""
            setup_head = " ".join(filter(None, [head, options, line.split("tree=")[1].split()[0]]))
        elif setup_head and line.strip().startswith(("cold, best", "warm, best")):
            out["setup"][f"{setup_head} {line.split(',')[0].strip()}"].append(f)
    return out


def cell(runs: list[dict[str, str]], key: str, unit: str = "") -> str:
    vals = [r[key].removesuffix("s") if unit else r[key] for r in runs if key in r]
    return " / ".join(v + unit for v in vals) if vals else "-"


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def ingest_table(runs: dict[str, list[dict[str, str]]]) -> str:
    models = [m for m in MODELS if m in runs]
    spec = [("bare forward, one pass", "bare_forward_s", " s"), ("ingest, no outputs", "ingest_no_outputs", " s"),
            ("  over the bare forward", "ratio_no_outputs", ""),
            ("ingest with outputs and twins", "ingest", " s"), ("  over the bare clean + twin passes",
                                                                "ratio_vs_clean+twin", ""),
            ("ingest with outputs, no twins, over the one-pass bare", "ratio_no_twins", ""),
            ("notebook: run_with_cache + np.save", "npsave", " s"), ("notebook: run_with_cache + torch.save",
                                                                     "torchsave", " s"),
            ("raw-zarr floor ingest", "floor_ingest_s", " s"),
            ("of_floor (floor / ingest, no outputs)", "of_floor", ""),
            ("write alone through zarr (write_floor)", "write_floor", " s"), ("write_bound", "write_bound", ""),
            ("setup_s (outside the loop)", "setup_s", " s"), ("bytes per stored value", "bytes/value", ""),
            ("decomposition_err", "decomposition_err", "")]
    rows = [[name] + [cell(runs[m], key, unit) for m in models] for name, key, unit in spec]
    return table([""] + [SHORT[m] for m in models], rows)


def hook_table(runs: dict[str, list[dict[str, str]]]) -> str:
    rows = []
    for key, rs in runs.items():
        model, hook = key.split(" ", 1)
        rows.append([SHORT.get(model, model), f"`{hook}`", cell(rs, "whole_actstore_s", " s"),
                     cell(rs, "whole_saelens_s", " s"), cell(rs, "whole_saelens_vs_actstore"),
                     cell(rs, "actstore_no_outputs", " s"), cell(rs, "saelens", " s"), cell(rs, "saelens_vs_actstore"),
                     cell(rs, "pairs_median"), cell(rs, "npsave", " s")])
    return table(["model", "hook", "actstore whole call", "SAELens whole call", "SAELens / actstore",
                  "actstore loop", "SAELens run()", "run() / loop", "run() / loop, median of pairs",
                  "notebook np.save"], rows)


def reads_table(runs: dict[str, list[dict[str, str]]]) -> str:
    rows = []
    for model, rs in runs.items():
        rows.append([SHORT.get(model.split("(")[0], model), cell(rs, "touched_MB"), cell(rs, "direct_MB/s"),
                     cell(rs, "direct_x_zarr"), cell(rs, "direct_blosc1_x_zarr"), cell(rs, "via_zarr_x_zarr"),
                     cell(rs, "zarrs_x_zarr"),
                     cell(rs, "tensorstore_x_zarr"), cell(rs, "direct_s"), cell(rs, "dla_s"),
                     "**" + cell(rs, "read_ratio") + "**", cell(rs, "threads_gain")])
    return table(["model", "MB read", "direct MB/s", "direct x zarr", "direct, blosc on 1 thread, x zarr",
                  "store.read through zarr x zarr", "zarrs x zarr", "tensorstore x zarr", "direct s", "DLA s",
                  "read_ratio", "threads_gain"], rows)


def query_table(runs: dict[str, list[dict[str, str]]]) -> str:
    rows = []
    for model, rs in runs.items():
        rows.append([SHORT.get(model.split("(")[0], model), cell(rs, "n"), cell(rs, "tl_s", " s"),
                     cell(rs, "tl_seeds_s", " s"), cell(rs, "dla_s", " s"), "**" + cell(rs, "speedup") + "x**",
                     cell(rs, "tl_cold_process_s", " s"), cell(rs, "cold_process_s", " s"),
                     cell(rs, "cold_import_s", " s"),
                     cell(rs, "speedup_cold") + "x", cell(rs, "break_even_warm") + " / " + cell(rs, "break_even_cold"),
                     cell(rs, "max_err") + " / " + cell(rs, "err_tol"), cell(rs, "read_ratio"),
                     cell(rs, "read_ratio_median")])
    return table(["model", "examples", "TL (fast) warm", "TL (seeds' code) warm", "store DLA warm", "speedup warm",
                  "TL cold process", "store cold process", "its imports", "speedup cold",
                  "break-even queries warm / cold", "max_err / err_tol", "read_ratio", "read_ratio of medians"], rows)


def fallback_table(runs: dict[str, list[dict[str, str]]]) -> str:
    rows = [[store, cell(rs, "target"), cell(rs, "examples"), cell(rs, "kernel_ms", " ms"), cell(rs, "numpy_ms", " ms"),
             "**" + cell(rs, "numpy_over_kernel") + "**", cell(rs, "same_table")] for store, rs in runs.items()]
    return table(["store", "target", "examples", "head DLA, C kernel", "head DLA, numpy code", "numpy / kernel",
                  "same table"], rows)


def setup_table(runs: dict[str, list[dict[str, str]]]) -> str:
    rows = [[key, cell(rs, "setup_s", " s"), cell(rs, "digest_s", " s"), cell(rs, "create_s", " s"),
             cell(rs, "create_cpu_s", " s"), cell(rs, "loop_s", " s"), cell(rs, "call_s", " s")]
            for key, rs in runs.items()]
    return table(["model, tree, kind", "setup_s", "digest_s", "create_s (beside the loop)", "create_cpu_s", "loop_s",
                  "call_s"], rows)


# each kind collect() gathers -> the function printing its table, in the page's order
TABLES = {"ingest": ingest_table, "hook": hook_table, "reads": reads_table, "fallback": fallback_table,
          "query": query_table, "setup": setup_table}


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    lines = [line for p in sys.argv[1:] for line in Path(p).read_text().splitlines()]
    got = collect(lines)
    for kind, make in TABLES.items():
        if got.get(kind):
            print(f"### {kind}\n\n{make(got[kind])}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What an install without a C compiler costs: head-level DLA with the C kernel and with head_dot.py's numpy code.

For each store under DIR (the stores `benchmarks/reads.py --dir DIR` keeps: the GPT-2 shape and each zoo model),
best of --repeats warm head DLAs toward 'diff' where the task has counterfactuals ('correct' otherwise), the two
paths interleaved, and numpy_over_kernel = numpy_ms / kernel_ms. Both give the same table, bit for bit (checked
here on every store).

    python benchmarks/fallback.py [--dir /tmp/actstore-bench-stores] [--repeats 15]
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from query import best, dla_target

import actstore
from actstore.query import dla
from actstore.query import head_dot as hd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/tmp/actstore-bench-stores", help="stores kept by benchmarks/reads.py")
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    kernel = hd.KERNEL
    if kernel is None:
        raise SystemExit("fallback.py: the C kernel is not built here (python setup.py build_ext --inplace): "
                         "nothing to compare")
    stores = sorted(d for d in Path(args.dir).iterdir() if (d / "zarr.json").exists() and (d / "_commits").is_dir())
    if not stores:
        raise SystemExit(f"fallback.py: no store under {args.dir}; run benchmarks/reads.py --dir {args.dir} first")
    for path in stores:
        store = actstore.open_store(path)
        target = dla_target(store)
        tables, times = {}, {"kernel": [], "numpy": []}
        query = functools.partial(dla, store, level="head", target=target)
        for _ in range(3):  # interleaved: noise on the machine hits both
            for name, k in (("kernel", kernel), ("numpy", None)):
                hd.KERNEL = k
                try:
                    tables[name] = query()
                    times[name].append(best(query, max(1, args.repeats // 3))[0] * 1e3)
                finally:
                    hd.KERNEL = kernel
        same = tables["kernel"].equals(tables["numpy"])
        k_ms, n_ms = min(times["kernel"]), min(times["numpy"])
        print(f"{path.name:<20} target={target:<7} examples={store.n_examples} kernel_ms={k_ms:.1f} "
              f"numpy_ms={n_ms:.1f} numpy_over_kernel={n_ms / k_ms:.2f} same_table={'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()

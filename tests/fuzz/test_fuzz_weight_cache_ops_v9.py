"""Random sequences of what happens to stores linked from one weight cache entry (issue 14's stamps with link
counts): new stores ingested, stores deleted, snapshots made with hard links (`cp -al`: link counts up, no byte
changed), chmods (ctime only), and in-place edits of a linked chunk whose mtime moves (no os.utime). With no mtime
put back, every new store must read the model's own weights bit for bit (the cache reads an edited file again
and rebuilds), and every store made before an edit of its chunk is refused on reading it, never wrong."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from test_fuzz_weight_cache_v9 import _edit_in_place, _ingest, _reads_the_models_weights  # noqa: E402
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.store.verify import verify  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_model("addition", seed=5)


def _params_files(store: Path) -> list[Path]:
    return sorted(p for p in (store / "params").rglob("*") if p.is_file() and p.name != "zarr.json")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_lives_of_linked_stores(model, tmp_path, seed):
    rng = random.Random(seed)
    stores: dict[str, bool] = {}  # path -> whether it must read the model's weights
    made = 0

    def new_store() -> None:
        nonlocal made
        path = tmp_path / f"s{made}"
        made += 1
        store = _ingest(model, path)
        assert _reads_the_models_weights(store, model), (seed, path.name)
        stores[str(path)] = True

    new_store()
    # random steps, then always an edit, a deletion (link counts move too) and a new store
    for op in [rng.choice(["ingest", "ingest", "delete", "snapshot", "chmod", "edit"]) for _ in range(9)] + \
            ["edit", "delete", "ingest"]:
        if op == "ingest" or not stores:
            new_store()
            continue
        victim = Path(rng.choice(sorted(stores)))
        if op == "delete":
            shutil.rmtree(victim)
            del stores[str(victim)]
        elif op == "snapshot":
            copy = tmp_path / f"s{made}"
            made += 1
            subprocess.run(["cp", "-al", str(victim), str(copy)], check=True)
            stores[str(copy)] = stores[str(victim)]
        else:
            files = _params_files(victim)
            target = files[rng.randrange(len(files))]
            if op == "chmod":
                os.chmod(target, target.stat().st_mode)
                continue
            inode = target.stat().st_ino
            _edit_in_place(target, put_mtime_back=False)
            for path in stores:  # every store sharing that inode now holds the edited bytes
                shared = Path(path) / target.relative_to(victim)
                if shared.exists() and shared.stat().st_ino == inode:
                    stores[path] = False
    for path, good in stores.items():
        store_ok = _reads_the_models_weights(actstore.open_store(path), model)
        assert store_ok == good, (seed, path)
        assert verify(path).passed == good

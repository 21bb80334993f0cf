"""Every read of issue 14's DLA paths stays checked: one byte flipped in, or one byte cut from, the chunk of any
hook a DLA reads (hook_z, MLP hook_post, the final LayerNorm scale) of a one-chunk or a many-chunk store fails the
query with StoreCorruptError naming that hook, on 1 or 4 reading threads, on a store whose other queries ran
before (warm kept frames and scratch buffers); queries on two threads at once give the serial tables; and a Dask
cluster gives the local table bit for bit."""

from __future__ import annotations

import shutil
import sys
import threading
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from tiny_models import tiny_model  # noqa: E402

import actstore  # noqa: E402
from actstore.errors import StoreCorruptError  # noqa: E402
from actstore.query import chunks as chunks_mod  # noqa: E402
from actstore.query import dla  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

HOOKS = ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z", "blocks.1.mlp.hook_post", "ln_final.hook_scale"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dla_checks_v8")
    model = tiny_model("addition")
    kw = dict(batch=8, quiet=True, model_spec="tiny:addition")
    return {"one": actstore.ingest("addition", model, 37, 2, root / "one", chunk=64, **kw).path,
            "many": actstore.ingest("addition", model, 37, 2, root / "many", chunk=16, **kw).path}


def _damage(path: Path, hook: str, how: str) -> None:
    """One byte of chunk 0 of `hook` flipped (same size: only its crc32c tells) or cut off (its size tells)."""
    files = sorted((path / "acts" / hook / "c").rglob("*"))
    target = [f for f in files if f.is_file()][0]
    data = bytearray(target.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x40
    else:
        del data[-1]
    target.write_bytes(bytes(data))


@pytest.mark.parametrize("layout", ["one", "many"])
@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("how", ["flip", "cut"])
def test_a_damaged_chunk_fails_every_dla_path(stores, tmp_path, monkeypatch, layout, hook, how):
    path = tmp_path / "s"
    shutil.copytree(stores[layout], path)
    warm = actstore.open_store(path)
    dla(warm, "layer", "diff")  # kept frames, pools and scratch buffers warm, then the damage
    _damage(path, hook, how)
    level = "neuron" if "mlp" in hook else "head"
    for threads in (1, 4):
        monkeypatch.setattr(chunks_mod, "READ_THREADS", threads)
        for target in ("correct", "diff", 3):
            with pytest.raises(StoreCorruptError, match=hook.replace(".", r"\.")):
                dla(actstore.open_store(path), level, target)


def test_dask_gives_the_local_table(stores, client):
    for layout, path in stores.items():
        store = actstore.open_store(path)
        for level, target in (("head", "correct"), ("layer", "diff"), ("neuron", 5), ("path", "diff")):
            assert dla(store, level, target, client=client).equals(dla(store, level, target)), (layout, level)


def test_queries_on_two_threads_at_once_give_the_serial_tables(stores, tmp_path):
    """Two Python threads querying different stores (and different answer arrays) at once: the kept frames,
    the kept answer positions and each reading thread's scratch buffers never mix one query's values into
    another's."""
    other = actstore.ingest("days", _days_model(), 23, 4, tmp_path / "days", chunk=32, batch=8, quiet=True,
                            model_spec="tiny:days").path
    paths = [stores["one"], stores["many"], other]
    queries = [("head", "correct"), ("layer", "diff"), ("neuron", 3), ("head", "diff")]
    want = {(p, q): dla(actstore.open_store(p), *q) for p in paths for q in queries}
    errors: list[BaseException] = []

    def work(order: list[Path]) -> None:
        try:
            for _ in range(3):
                for p in order:
                    store = actstore.open_store(p)
                    for q in queries:
                        assert dla(store, *q).equals(want[(p, q)]), (p.name, q)
        except BaseException as e:  # noqa: BLE001 (reported by the main thread)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(order,)) for order in (paths, paths[::-1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def _days_model():
    """A tiny LayerNorm + MLP model over the days task's 256-token vocabulary."""
    cfg = HookedTransformerConfig(n_layers=2, n_heads=2, d_model=32, d_head=16, d_mlp=32, n_ctx=16, d_vocab=256,
                                  act_fn="gelu", normalization_type="LN", seed=3, device="cpu")
    model = HookedTransformer(cfg)
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    return model.eval()

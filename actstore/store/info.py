"""`store_info(path)`: what a store holds and what it costs on disk, as plain data and text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actstore.store.fs import RemotePath, StorePath
from actstore.store.layout import META, PARAMS, chunk_file
from actstore.store.open import open_store
from actstore.store.sweeps import list_sweeps


@dataclass(frozen=True)
class ArraySize:
    """One activation array: committed values' raw bytes vs. bytes of its files on disk."""

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    positions: str
    raw_bytes: int
    disk_bytes: int

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.disk_bytes if self.disk_bytes else float("nan")


def _dir_bytes(path: StorePath) -> int:
    if isinstance(path, RemotePath):
        return path.total_bytes()
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def store_info(path: str | Path | RemotePath, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Manifest, example counts, per-array sizes and compression ratios of the store at `path`
    (a local path or an fsspec URL)."""
    store = open_store(path, storage_options)
    m = store.manifest
    arrays = []
    committed = sum(1 for _ in store.chunks())
    for h in m.hooks:  # committed chunks only: an ingest in progress may be writing the next one
        files = (chunk_file(store.path, h.name, k, len(h.shape)) for k in range(committed))
        disk = sum(f.stat().st_size for f in files if f.exists())
        arrays.append(ArraySize(h.name, h.dims, h.shape, h.positions, h.example_bytes * store.n_examples, disk))
    raw = sum(a.raw_bytes for a in arrays)
    disk = sum(a.disk_bytes for a in arrays)
    return {
        "path": str(store.path),
        "manifest": m.to_dict(),
        "n_examples": store.n_examples,
        "n_total": m.n,
        "committed_chunks": committed,
        "n_chunks": m.n_chunks,
        "arrays": arrays,
        "acts_raw_bytes": raw,
        "acts_disk_bytes": disk,
        "compression_ratio": raw / disk if disk else float("nan"),
        "params_disk_bytes": _dir_bytes(store.path / PARAMS),
        "meta_disk_bytes": _dir_bytes(store.path / META),
        "total_disk_bytes": _dir_bytes(store.path),
        "sweeps": [{"sweep": w.sweep, "kind": w.spec.get("kind"), "hook": w.spec.get("hook"),
                    "grain": w.spec.get("grain"), "examples": [w.spec.get("start"), w.spec.get("stop")],
                    "parts": f"{w.committed}/{w.n_parts}", "complete": w.complete}
                   for w in list_sweeps(store.path)],
    }


def format_info(info: dict[str, Any]) -> str:
    """The human-readable `actstore info` text."""
    m = info["manifest"]
    cfg = m["model_config"]
    dec = m.get("decomposition") or {}
    lines = [
        f"store      {info['path']}",
        f"examples   {info['n_examples']} of {info['n_total']} committed "
        f"({info['committed_chunks']}/{info['n_chunks']} chunks of {m['chunk']})",
        f"task       {m['task']} {_kv(m['task_params'])} seed={m['seed']} "
        f"answers/example={m['n_answers']} width={m['width']}",
        f"model      {m['model_spec']}: {cfg.get('n_layers')} layers x {cfg.get('n_heads')} heads, "
        f"d_model={cfg.get('d_model')}, d_mlp={cfg.get('d_mlp')}, norm={cfg.get('normalization_type')}, "
        f"pos={cfg.get('positional_embedding_type')}, {cfg.get('attention_dir')}, dtype={m['model_dtype']}, "
        f"weights sha256 {(m.get('weights_sha256') or 'not recorded')[:16]}",
        f"processing {_kv(m['processing'])}",
        f"storage    dtype={m['dtype']} batch={m['batch']} codec={_kv(m['codec'])} "
        f"format={m['format_version']} actstore={m.get('package_version', '')}",
        "decomposition " + (
            f"{dec.get('status')}: max |components - logits| = {dec['max_abs_error']:.3g} on the first "
            f"{dec.get('n_examples')} examples "
            f"({m['dtype']}-stored: {dec.get('stored_dtype_max_abs_error', float('nan')):.3g})"
            if "max_abs_error" in dec else f"{dec.get('status', 'not run')}: {dec.get('reason', '')}"),
        "",
        f"{'array':<34} {'positions':<9} {'shape':<34} {'raw MB':>9} {'disk MB':>9} {'ratio':>6}",
    ]
    for a in info["arrays"]:
        shape = " ".join(f"{d}={s}" for d, s in zip(a.dims[1:], a.shape[1:]))
        lines.append(f"{a.name:<34} {a.positions:<9} {shape:<34} {a.raw_bytes / 1e6:>9.2f} "
                     f"{a.disk_bytes / 1e6:>9.2f} {a.ratio:>6.2f}")
    lines += [
        f"{'activations':<34} {'':<9} {'':<34} {info['acts_raw_bytes'] / 1e6:>9.2f} "
        f"{info['acts_disk_bytes'] / 1e6:>9.2f} {info['compression_ratio']:>6.2f}",
        f"weights {info['params_disk_bytes'] / 1e6:.2f} MB, meta {info['meta_disk_bytes'] / 1e6:.2f} MB, "
        f"total on disk {info['total_disk_bytes'] / 1e6:.2f} MB",
    ]
    for w in info.get("sweeps", []):
        state = "complete" if w["complete"] else f"unfinished, {w['parts']} parts (rerun to resume)"
        lines.append(f"sweep {w['sweep']}  {w['kind']} {w['hook']} by {w['grain']}, examples "
                     f"{w['examples'][0]}..{w['examples'][1] - 1}: {state}")
    return "\n".join(lines)


def _kv(d: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in d.items()) if d else "-"

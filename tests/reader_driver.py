"""Run `actstore` commands in one process as a reader-only install would, for tests/test_reader_only.py.

    python reader_driver.py SPEC.json RESULT.json

SPEC: {"block": bool, "commands": [[arg, ...], ...], "store": PATH or null}. With "block", an import
hook first makes torch, transformer_lens, transformers, tokenizers and safetensors uninstallable (a
ModuleNotFoundError, as on an install without the model extra). Each command runs through
`actstore.cli.main` with its stdout and stderr captured. With "store", the Python API is checked
too: `actstore.open_store` and a DLA work, `actstore.ingest(...)` raises ModelsExtraError.
RESULT: {"runs": [{"argv", "rc", "stdout", "stderr"}, ...], "api": {...}, "model_modules": [names
imported]}. Runs without pytest (and in a venv holding only the reader's packages).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import io
import json
import sys
from typing import Any

MODEL_MODULES = ("torch", "transformer_lens", "transformers", "tokenizers", "safetensors")


class BlockModelSide(importlib.abc.MetaPathFinder):
    """Every module of the model extra is missing, as on `pip install actstore` without `[models]`."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] in MODEL_MODULES:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: a reader-only install)", name=name)
        return None


def run_command(argv: list[str]) -> dict[str, Any]:
    from actstore.cli import main

    out_bytes = io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", write_through=True)  # has .buffer, for binary output
    err = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
        except BaseException as e:  # noqa: BLE001 - a traceback is a test failure, reported with its argv
            import traceback

            traceback.print_exc(file=err)
            rc = f"raised {type(e).__name__}"
    out.flush()
    return {"argv": argv, "rc": rc, "stdout": out_bytes.getvalue().decode("utf-8", "replace"),
            "stderr": err.getvalue()}


def check_api(store_path: str) -> dict[str, Any]:
    import actstore
    from actstore.query import dla

    store = actstore.open_store(store_path)
    heads = dla(store, level="head", target="correct")
    result: dict[str, Any] = {"examples": len(store.examples), "dla_rows": heads.height}
    try:
        actstore.ingest("addition", "zoo:addition", n=4, seed=0, out=store_path + ".never")
        result["ingest"] = "ran"
    except ModuleNotFoundError as e:
        from actstore.errors import ModelsExtraError

        result["ingest"] = f"{'ModelsExtraError' if isinstance(e, ModelsExtraError) else type(e).__name__}: {e}"
    return result


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    if spec.get("block"):
        sys.meta_path.insert(0, BlockModelSide())
    result: dict[str, Any] = {"runs": [run_command(list(argv)) for argv in spec["commands"]]}
    if spec.get("store"):
        result["api"] = check_api(spec["store"])
    result["model_modules"] = sorted(m for m in sys.modules if m.partition(".")[0] in MODEL_MODULES)
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())

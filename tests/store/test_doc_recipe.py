"""docs/store.md is enough to use a store without actstore.

The first half of this module is the doc's recipe written out with json, numpy, zarr and
pyarrow only (hashlib for the digest): the committed example count, the answer arrays, the
readout (centre, divide by ln_final.hook_scale, @ W_U, + b_U, as per-component terms), the
per-task label definitions and weights_sha256. `test_recipe_is_self_contained` checks that it
reaches nothing else. The tests then hold it against actstore on stores of the four zoo models
(LayerNorm + MLP causal LM, attention-only addition, the bidirectional brackets classifier, and
the attention-only, LayerNorm-free shortformer list_update), and run the doc's own numpy
snippet, so an edit that makes the doc wrong fails here.
"""

from __future__ import annotations

import builtins
import hashlib
import inspect
import json
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

DOC = Path(__file__).resolve().parents[2] / "docs" / "store.md"


# --- the doc's recipe: json, numpy, zarr, pyarrow (and hashlib) only ----------------------------


def read_manifest(root):
    """The manifest: attributes["actstore"] of the root zarr.json."""
    with open(f"{root}/zarr.json") as f:
        return json.load(f)["attributes"]["actstore"]


def committed_chunks(root, manifest):
    """(k, n_examples): k = contiguous commit records 00000.json, 00001.json, ...; n = min(k * chunk, n)."""
    n_chunks = -(-manifest["n"] // manifest["chunk"])
    k = 0
    while k < n_chunks:
        try:
            open(f"{root}/_commits/{k:05d}.json").close()
        except FileNotFoundError:
            break
        k += 1
    return k, min(k * manifest["chunk"], manifest["n"])


def read_meta(root, table, k):
    """Parts 0..k-1 of a meta table (the committed ones), in example order."""
    return pa.concat_tables([pq.read_table(f"{root}/meta/{table}/part-{i:05d}.parquet") for i in range(k)])


def answer_arrays(examples):
    """[example, answer] answer positions, correct tokens, and the input token AT each answer position."""
    pos = np.array(examples.column("answer_positions").to_pylist(), dtype=np.int64)
    tok = np.array(examples.column("answer_tokens").to_pylist(), dtype=np.int64)
    inp = np.array([[row[p] for p in ps] for row, ps in zip(examples.column("tokens").to_pylist(), pos.tolist())],
                   dtype=np.int64).reshape(pos.shape)
    return pos, tok, inp


def read_param(root, name):
    return np.asarray(zarr.open_array(f"{root}/params/{name}", mode="r")[...], dtype=np.float64)


def param_names(root):
    return sorted(zarr.open_group(f"{root}/params", mode="r").array_keys())


def read_at_answers(root, manifest, hook, n, pos):
    """A hook's values at the answer positions, [example, answer, ...] float64."""
    dims = next(h["dims"] for h in manifest["hooks"] if h["name"] == hook)
    x = np.asarray(zarr.open_array(f"{root}/acts/{hook}", mode="r")[:n], dtype=np.float64)
    if dims[1] == "answer":  # stored at the answer positions only
        return x
    return x[np.arange(n)[:, None], pos]  # dims[1] is 'pos' for hook_z, hook_post and hook_scale


def readout(root):
    """Every component's direct attribution toward the correct token at each answer, and the logit
    rebuilt from them: (components {name: [example, answer]}, logit [example, answer], n)."""
    m = read_manifest(root)
    cfg = m["model_config"]
    k, n = committed_chunks(root, m)
    pos, tok, inp = answer_arrays(read_meta(root, "examples", k))
    names = set(param_names(root))
    norm = cfg["normalization_type"]  # None, LN, LNPre, RMS, RMSPre
    w_u = read_param(root, "unembed.W_U")  # [d_model, d_vocab_out]
    u = w_u[:, tok].transpose(1, 2, 0)  # [example, answer, d_model]: the correct token's column
    if "ln_final.w" in names:  # only where the final LayerNorm was not folded
        u = u * read_param(root, "ln_final.w")
    if norm in ("LN", "LNPre"):  # centring the residual == centring the read-out direction
        u = u - u.mean(-1, keepdims=True)
    scale = read_at_answers(root, m, "ln_final.hook_scale", n, pos)[..., 0] if norm else np.ones(pos.shape)
    g = u / scale[..., None]  # logit - b_U = (sum of components) . g

    comps = {"embed": np.einsum("eam,eam->ea", read_param(root, "embed.W_E")[inp], g)}
    if cfg["positional_embedding_type"] == "standard":  # shortformer / rotary: W_pos is not in the residual
        comps["pos_embed"] = np.einsum("eam,eam->ea", read_param(root, "pos_embed.W_pos")[pos], g)
    has_mlp = bool(cfg["d_mlp"]) and not cfg["attn_only"]
    for layer in range(cfg["n_layers"]):
        z = read_at_answers(root, m, f"blocks.{layer}.attn.hook_z", n, pos)  # [e, a, head, d_head]
        w_o = read_param(root, f"blocks.{layer}.attn.W_O")  # [head, d_head, d_model]
        per_head = np.einsum("eahd,hdm,eam->eah", z, w_o, g)
        for h in range(cfg["n_heads"]):
            comps[f"L{layer}H{h}"] = per_head[..., h]
        comps[f"attn_bias{layer}"] = g @ read_param(root, f"blocks.{layer}.attn.b_O")
        if has_mlp:
            post = read_at_answers(root, m, f"blocks.{layer}.mlp.hook_post", n, pos)  # [e, a, d_mlp]
            w_out = read_param(root, f"blocks.{layer}.mlp.W_out")  # [d_mlp, d_model]
            comps[f"mlp{layer}"] = (np.einsum("ean,nm,eam->ea", post, w_out, g)
                                    + g @ read_param(root, f"blocks.{layer}.mlp.b_out"))
    if "ln_final.b" in names:  # a constant, not divided by the scale
        comps["ln_final_bias"] = w_u[:, tok].transpose(1, 2, 0) @ read_param(root, "ln_final.b")
    b_u = read_param(root, "unembed.b_U") if "unembed.b_U" in names else np.zeros(w_u.shape[1])
    logit = sum(comps.values()) + b_u[tok]
    return comps, logit, n


def stored_outputs(root, column):
    """An outputs column as [example, answer] (rows ordered by example_id, answer_idx)."""
    m = read_manifest(root)
    k, n = committed_chunks(root, m)
    out = read_meta(root, "outputs", k)
    e = np.asarray(out.column("example_id").to_pylist())
    a = np.asarray(out.column("answer_idx").to_pylist())
    values = np.full((n, m["n_answers"]), np.nan)
    values[e, a] = out.column(column).to_pylist()
    return values


def addition_carries(a, b, digits):
    """carry_i: carry INTO sum digit i (digit 0 the most significant) out of the column to its right,
    adding column by column from the units, so a carry that cascades through a 9 counts."""
    a, b = np.asarray(a), np.asarray(b)
    carry = np.zeros(a.shape, dtype=bool)
    out = {}
    for col in range(digits - 1, 0, -1):  # the units column is digits-1
        place = 10 ** (digits - 1 - col)
        carry = (a // place) % 10 + (b // place) % 10 + carry >= 10
        out[f"carry_{col - 1}"] = carry
    return out


def bracket_labels(text):
    """(balanced, failure) of one bracket string from its running count of opens minus closes."""
    heights = np.cumsum([1 if c == "(" else -1 for c in text]) if text else np.zeros(1)
    total, negative = heights[-1] != 0, bool((heights < 0).any())
    failure = {(False, False): "none", (True, False): "total_elevation", (False, True): "negative_elevation",
               (True, True): "both"}[(bool(total), negative)]
    return failure == "none", failure


def weights_sha256(root):
    """sha256 over the weights in name order: each name's UTF-8 bytes, then its float32 C-order bytes."""
    h = hashlib.sha256()
    for name in param_names(root):
        h.update(name.encode())
        h.update(np.ascontiguousarray(zarr.open_array(f"{root}/params/{name}", mode="r")[...],
                                      dtype="<f4").tobytes())
    return h.hexdigest()


def manifest_sha256(root):
    """The store record's manifest digest: sha256 of the manifest's canonical JSON."""
    return hashlib.sha256(json.dumps(read_manifest(root), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def rounding_bound(root, comps, n):
    """[example, answer] 2**-11 * (sum over stored hook_z / hook_post values of |value * d logit/d value|
    + |the part of logit - b_U divided by the scale|): how far float16 rounding of the stored
    activations (the scale included) can move the rebuilt logit, to first order."""
    m = read_manifest(root)
    cfg = m["model_config"]
    k, _ = committed_chunks(root, m)
    pos, tok, _ = answer_arrays(read_meta(root, "examples", k))
    g = read_param(root, "unembed.W_U")[:, tok].transpose(1, 2, 0)
    if "ln_final.w" in param_names(root):
        g = g * read_param(root, "ln_final.w")
    if cfg["normalization_type"] in ("LN", "LNPre"):
        g = g - g.mean(-1, keepdims=True)
    if cfg["normalization_type"]:
        g = g / read_at_answers(root, m, "ln_final.hook_scale", n, pos)
    total = np.abs(sum(v for name, v in comps.items() if name != "ln_final_bias"))
    for layer in range(cfg["n_layers"]):
        z = read_at_answers(root, m, f"blocks.{layer}.attn.hook_z", n, pos)
        w_o = read_param(root, f"blocks.{layer}.attn.W_O")
        total += np.einsum("eahd,eahd->ea", np.abs(z), np.abs(np.einsum("hdm,eam->eahd", w_o, g)))
        if cfg["d_mlp"] and not cfg["attn_only"]:
            post = read_at_answers(root, m, f"blocks.{layer}.mlp.hook_post", n, pos)
            w_out = read_param(root, f"blocks.{layer}.mlp.W_out")
            total += np.einsum("ean,ean->ea", np.abs(post), np.abs(g @ w_out.T))
    return 2.0**-11 * total


RECIPE: list[Callable[..., Any]] = [
    read_manifest, committed_chunks, read_meta, answer_arrays, read_param, param_names, read_at_answers, readout,
    rounding_bound, stored_outputs, addition_carries, bracket_labels, weights_sha256, manifest_sha256]


# --- the tests: actstore only builds the stores and computes the reference ---------------------

ZOO = {"addition": "zoo:addition", "brackets": "zoo:brackets", "ioi": "zoo:lm", "list_update": "zoo:list_update"}
N, CHUNK = 64, 24  # three chunks, the last one partial


UNFOLDED = "unfolded"  # a random LayerNorm + MLP model with nothing folded or centred (ln_final.w / .b stored)
ALL = [*ZOO, UNFOLDED]


def unfolded_model():
    """Unprocessed: components not centred, ln_final.w and .b kept; every weight perturbed so none is 0 or 1."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    model = HookedTransformer(HookedTransformerConfig(
        n_layers=2, n_heads=2, d_model=32, d_head=16, d_mlp=48, n_ctx=16, d_vocab=12, act_fn="gelu",
        normalization_type="LN", seed=1, device="cpu"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    import actstore

    root = tmp_path_factory.mktemp("doc_recipe")
    for task, model in ZOO.items():
        actstore.ingest(task, model, N, 0, root / task, chunk=CHUNK, quiet=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        actstore.ingest("addition", unfolded_model(), N, 0, root / UNFOLDED, chunk=CHUNK, quiet=True,
                        model_spec="tiny-unfolded")
    return {task: root / task for task in ALL}


def test_recipe_is_self_contained() -> None:
    allowed = {"json", "np", "zarr", "pa", "pq", "hashlib"} | {f.__name__ for f in RECIPE}
    for f in RECIPE:
        names = inspect.getclosurevars(f)
        used = set(names.globals) | set(names.nonlocals)
        assert used <= allowed, f"{f.__name__} reaches {sorted(used - allowed)}"


@pytest.mark.parametrize("task", ALL)
def test_readout_matches_dla_and_stored_logits(stores, task) -> None:
    import polars as pl

    from actstore import open_store
    from actstore.query import dla

    path = stores[task]
    store = open_store(path)
    comps, logit, n = readout(str(path))
    assert n == store.n_examples == N
    assert ("ln_final_bias" in comps) == (task == UNFOLDED) and ("pos_embed" in comps) == (task != "list_update")

    # per-component DLA (every component of by='head', heads included) matches actstore's
    ref = dla(store, level="head", target="correct")
    assert set(ref.get_column("component").unique()) == set(comps)
    for name, values in comps.items():
        rows = ref.filter(pl.col("component") == name).sort("example_id", "answer_idx")
        want = rows.get_column("value").to_numpy().reshape(values.shape)
        np.testing.assert_allclose(values, want, rtol=1e-4, atol=1e-6 * np.abs(logit).max(), err_msg=name)

    # the rebuilt logit (b_U included) matches the model's own float32 logit within what rounding
    # the stored float16 activations can change: each stored value is off by at most 2**-11 of
    # itself (float16 unit roundoff; float16 subnormals, below 2**-14, are off by <= 2**-25, which
    # the absolute term covers), and the logit is linear in them once the final scale is fixed, so
    # |rebuilt - stored| <= 2**-11 * (sum |value| * |d logit / d value| + |logit - b_U|), the last term
    # for rounding the scale itself (first order: the second-order terms are 2**-11 times smaller);
    # plus 1e-4 for the float32 forward pass itself (5x the largest error, 2e-5, that ingest records
    # for these models in the manifest's full-precision decomposition check). Observed: at most 0.42
    # of the bound (0.034 logits on addition, 0.01 or less on the others).
    stored = stored_outputs(str(path), "correct_logit")
    bound = rounding_bound(str(path), comps, n)
    err = np.abs(logit - stored)
    assert (err <= bound + 1e-4).all(), f"max error {err.max():.3g}, bound there {bound.flat[err.argmax()]:.3g}"


def doc_snippet() -> str:
    """The numpy snippet of docs/store.md's readout recipe (the first python block after its heading)."""
    text = DOC.read_text()
    section = text[text.index("### The readout recipe"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "docs/store.md: no python block under 'The readout recipe'"
    return match.group(1)


@pytest.mark.parametrize("task", ALL)
def test_doc_snippet_matches_the_recipe(stores, task) -> None:
    """The doc's own snippet, run with json, numpy, zarr and pyarrow importable and nothing else."""
    code = doc_snippet()
    assert 'root = "STORE"' in code
    code = code.replace('root = "STORE"', f"root = {str(stores[task])!r}")
    allowed = {"json", "numpy", "pyarrow", "pyarrow.parquet", "zarr"}

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and globals is not None and globals.get("__name__") == "doc_snippet" and name not in allowed:
            raise ImportError(f"the doc's snippet imports {name!r}")
        return builtins.__import__(name, globals, locals, fromlist, level)

    ns: dict[str, Any] = {"__name__": "doc_snippet", "__builtins__": {**vars(builtins), "__import__": guarded_import}}
    exec(compile(code, "docs/store.md", "exec"), ns)

    comps, logit, n = readout(str(stores[task]))
    assert set(ns["dla"]) == set(comps)
    for name, values in comps.items():
        np.testing.assert_allclose(ns["dla"][name], values, rtol=1e-9, atol=1e-9, err_msg=name)
    np.testing.assert_allclose(ns["logit"], logit, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(ns["stored"], stored_outputs(str(stores[task]), "correct_logit"))
    assert ns["n"] == n


def test_logit_lens_leaves_out_b_U(stores, capsys) -> None:
    """The cached logit lens's last stage is the rebuilt logit minus b_U (as the doc and --help say)."""
    import polars as pl

    from actstore import open_store
    from actstore.cli import main
    from actstore.query import logit_lens

    root = str(stores["ioi"])
    comps, logit, n = readout(root)
    _, tok, _ = answer_arrays(read_meta(root, "examples", committed_chunks(root, read_manifest(root))[0]))
    lens = logit_lens(open_store(root))
    last = lens.filter(pl.col("stage") == "resid_post").sort("example_id", "answer_idx")
    want = logit - read_param(root, "unembed.b_U")[tok]
    np.testing.assert_allclose(last.get_column("value").to_numpy().reshape(want.shape), want, rtol=1e-4,
                               atol=1e-6 * np.abs(want).max())

    assert main(["logit-lens", "--help"]) == 0
    assert "leave out b_U" in " ".join(capsys.readouterr().out.split())


def test_committed_count_the_docs_way(stores, tmp_path) -> None:
    """n_examples = min(k * chunk, n) over the contiguous records, as open_store counts; the records' fields."""
    from actstore import open_store
    from actstore.errors import IncompleteStoreWarning

    src = stores["list_update"]
    m = read_manifest(str(src))
    k, n = committed_chunks(str(src), m)
    assert (k, n) == (3, N) and n == open_store(src).n_examples

    store_sha = hashlib.sha256((src / "_commits/store.json").read_bytes()).hexdigest()
    complete = json.loads((src / "_commits/complete.json").read_text())
    assert complete["n_chunks"] == k
    for i in range(k):
        raw = (src / f"_commits/{i:05d}.json").read_bytes()
        rec = json.loads(raw)
        assert set(rec) == {"chunk", "start", "stop", "files", "store"}
        assert (rec["chunk"], rec["start"], rec["stop"]) == (i, i * CHUNK, min((i + 1) * CHUNK, N))
        assert rec["store"] == store_sha
        assert complete["records"][f"{i:05d}"] == hashlib.sha256(raw).hexdigest()
        tables = ("examples", "tokens", "outputs", *(("topk",) if m.get("top_k") else ()))
        parts = {f"meta/{t}/part-{i:05d}.parquet" for t in tables}
        chunks = {f for f in rec["files"] if f.startswith("acts/")}
        assert set(rec["files"]) == parts | chunks
        assert {f.split("/c/")[0][len("acts/"):] for f in chunks} == {h["name"] for h in m["hooks"]}
        for rel, entry in rec["files"].items():
            data = (src / rel).read_bytes()
            assert entry[:2] == [len(data), hashlib.sha256(data).hexdigest()]
            assert entry[2:] == ([data[-4:].hex()] if rel.startswith("acts/") else [])
    assert rec["stop"] == n  # the stop of the last record

    # an interrupted ingest (last record gone), and a gap (a record after it does not count)
    for drop, want in ((["00002"], 48), (["00001"], 24), (["00000"], 0)):
        copy = tmp_path / f"drop{drop[0]}"
        shutil.copytree(src, copy)
        (copy / "_commits/complete.json").unlink()
        for d in drop:
            (copy / f"_commits/{d}.json").unlink()
        m2 = read_manifest(str(copy))
        assert committed_chunks(str(copy), m2)[1] == want
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IncompleteStoreWarning)
            assert open_store(copy).n_examples == want


def test_labels_the_docs_way(stores) -> None:
    """addition carry_i and brackets failure / n_brackets / length / answer coding, from the doc's definitions."""
    from actstore.datasets import get_task

    root = str(stores["addition"])
    m = read_manifest(root)
    ex = read_meta(root, "examples", committed_chunks(root, m)[0])
    digits = m["task_params"]["digits"]
    a, b = np.asarray(ex.column("a").to_pylist()), np.asarray(ex.column("b").to_pylist())
    carries = addition_carries(a, b, digits)
    assert sorted(carries) == sorted(c for c in ex.column_names if c.startswith("carry_"))
    for name, want in carries.items():
        np.testing.assert_array_equal(np.asarray(ex.column(name).to_pylist()), want, err_msg=name)
    np.testing.assert_array_equal(np.asarray(ex.column("any_carry").to_pylist()),
                                  np.any(list(carries.values()), axis=0))
    pos, tok, inp = answer_arrays(ex)
    place = 10 ** np.arange(digits - 1, -1, -1)
    np.testing.assert_array_equal(tok, ((a + b)[:, None] // place) % 10)  # sum digits, most significant first
    np.testing.assert_array_equal(pos, np.broadcast_to(np.arange(2 * digits + 1, 3 * digits + 1), pos.shape))
    assert (inp[:, 0] == 11).all()  # '=' predicts the first sum digit

    # cascades (a carry passed on through a column summing to 9) are rare in 64 examples: check many more
    data = get_task("addition").generate(20_000, 1)
    a, b = data.labels["a"].to_numpy(), data.labels["b"].to_numpy()
    carries = addition_carries(a, b, 4)
    for name, want in carries.items():
        np.testing.assert_array_equal(data.labels[name].to_numpy(), want, err_msg=name)
    nines = (a // 10) % 10 + (b // 10) % 10 == 9
    assert (nines & carries["carry_1"]).any(), "no cascaded carry among the examples"
    example = addition_carries(np.array([199]), np.array([1]), 4)  # the doc's example: 0199 + 0001 = 0200
    assert {name: bool(v[0]) for name, v in example.items()} == {"carry_2": True, "carry_1": True, "carry_0": False}

    root = str(stores["brackets"])
    ex = read_meta(root, "examples", committed_chunks(root, read_manifest(root))[0]).to_pylist()
    for row in ex:
        balanced, failure = bracket_labels(row["text"])
        assert (row["balanced"], row["failure"]) == (balanced, failure)
        assert row["n_brackets"] == len(row["text"]) and row["length"] == len(row["text"]) + 2
        assert row["answer_positions"] == [0]
        assert row["answer_tokens"] == [1 if balanced else 0] and row["counter_tokens"] == [0 if balanced else 1]
        assert row["tokens"] == [0, *(3 if c == "(" else 4 for c in row["text"]), 2]
    assert {row["failure"] for row in ex} == {"none", "total_elevation", "negative_elevation", "both"}


@pytest.mark.parametrize("task", ["brackets", "ioi"])
def test_padding_holds_pad_token_activations(stores, task) -> None:
    """Padded positions hold real activations; pattern columns of pad keys are 0, pad query rows sum to 1."""
    root = str(stores[task])
    m = read_manifest(root)
    k, n = committed_chunks(root, m)
    lengths = np.asarray(read_meta(root, "examples", k).column("length").to_pylist())
    assert (lengths < m["width"]).any()
    pad = np.arange(m["width"])[None, :] >= lengths[:, None]  # [example, pos]
    for layer in range(m["model_config"]["n_layers"]):
        z = np.asarray(zarr.open_array(f"{root}/acts/blocks.{layer}.attn.hook_z", mode="r")[:n], dtype=np.float32)
        assert (np.abs(z[pad]).max(axis=(-2, -1)) > 0).all()  # every padded position
        pattern = np.asarray(zarr.open_array(f"{root}/acts/blocks.{layer}.attn.hook_pattern", mode="r")[:n],
                             dtype=np.float32)  # [example, head, query_pos, key_pos]
        assert (pattern.transpose(0, 3, 1, 2)[pad] == 0).all()  # pad keys get no attention
        np.testing.assert_allclose(pattern.transpose(0, 2, 1, 3)[pad].sum(-1), 1.0, atol=1e-2)


@pytest.mark.parametrize("task", ALL)
def test_digests_the_docs_way(stores, task) -> None:
    root = str(stores[task])
    m = read_manifest(root)
    assert weights_sha256(root) == m["weights_sha256"]
    record = json.loads((stores[task] / "_commits/store.json").read_text())
    assert set(record) == {"manifest_sha256", "metadata", "params"}
    assert record["manifest_sha256"] == manifest_sha256(root)
    assert {f"params/{name}/zarr.json" for name in param_names(root)} | {"params/zarr.json", "acts/zarr.json"} | {
        f"acts/{h['name']}/zarr.json" for h in m["hooks"]} == set(record["metadata"])
    for rel, digest in record["metadata"].items():
        assert hashlib.sha256((stores[task] / rel).read_bytes()).hexdigest() == digest
    for rel, (size, digest, tail) in record["params"].items():
        data = (stores[task] / rel).read_bytes()
        assert (size, digest, tail) == (len(data), hashlib.sha256(data).hexdigest(), data[-4:].hex())

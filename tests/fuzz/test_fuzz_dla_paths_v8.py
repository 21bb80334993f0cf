"""Direct logit attribution of real tiny stores, every way a query can be answered (issue 14's faster single-chunk
reads): one chunk or many (a last one partial), 1 or 4 reading threads, repeated and reopened queries (the kept
key/item frames and answer positions), every level, every target kind ('correct', 'diff', a token id, a list of
token ids not in id order, an expression) and position selector, give the same table bit for bit, and that table
equals an independent float64 numpy computation from the stored arrays and weights, and TransformerLens's own
decomposition (stack_head_results / decompose_resid over ln_final.hook_scale) of the same model on the stored
tokens.

Stores: addition (4 answers at the same positions, answers from 10 digit tokens, counterfactual tokens), days
(one answer whose position differs per example, words from a 256-token vocabulary) and list_update (no
LayerNorm, shortformer, answers over 52 tokens)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "ingest"))
from tiny_models import tiny_model  # noqa: E402

from helpers import processed_model  # noqa: E402

import actstore  # noqa: E402
from actstore.query import chunks as chunks_mod  # noqa: E402
from actstore.query import dla  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)
from transformer_lens import HookedTransformer  # noqa: E402

DAYS = dict(n_layers=2, n_heads=2, d_model=32, d_head=16, d_mlp=32, n_ctx=16, d_vocab=256, act_fn="gelu",
            normalization_type="LN")


def days_model() -> HookedTransformer:
    return processed_model(bias_std=0.2, bias_seed=12, **DAYS, seed=11).eval()


# name: (task, model maker, n, one chunk, many chunks)
STORES = {
    "addition": ("addition", lambda: tiny_model("addition"), 37, 64, 8),
    "days": ("days", days_model, 29, 32, 6),
    "list_update": ("list_update", lambda: tiny_model("list_update"), 23, 32, 5),
    # 1200 answers in one chunk: direct_attribution divides column by column there (COLUMNWISE_ROWS), while the
    # many-chunk store's 256-answer chunks concatenate and divide once
    "addition_long": ("addition", lambda: tiny_model("addition", seed=1), 300, 512, 64),
}
LEVELS = ("head", "layer", "neuron")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """{name: (model, one-chunk store, many-chunk store, one-chunk float32 store)}: the same ingest each."""
    root = tmp_path_factory.mktemp("dla_v8")
    made = {}
    for name, (task, make, n, one, many) in STORES.items():
        model = make()
        kw = dict(batch=8, quiet=True, model_spec=f"tiny:{name}")
        made[name] = (model,
                      actstore.ingest(task, model, n, 5, root / f"{name}_one", chunk=one, **kw).path,
                      actstore.ingest(task, model, n, 5, root / f"{name}_many", chunk=many, **kw).path,
                      actstore.ingest(task, model, n, 5, root / f"{name}_f32", chunk=one, dtype="float32", **kw).path)
    return made


def _answers(store) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """answer_pos, answer tokens, counterfactual tokens: [example, answer] from meta/outputs."""
    out = store.outputs.sort(["example_id", "answer_idx"])
    e, a = store.n_examples, store.n_answers
    pos = out["answer_pos"].to_numpy().reshape(e, a)
    correct = out["correct_token"].to_numpy().reshape(e, a)
    counter = out["counter_token"].to_numpy().reshape(e, a) if "counter_token" in out.columns else None
    return pos, correct, counter


def _oracle(store, level: str, u: np.ndarray, pos: np.ndarray) -> dict[str, np.ndarray]:
    """{component: [example, slot] float64}: each component's direct attribution read along u [example, slot,
    d_model] at positions pos [example, slot], from the stored arrays and weights alone."""
    p = {name: store.param(name).astype(np.float64) for name in store.param_names}
    arch = store.arch
    rows = np.arange(store.n_examples)[:, None]
    tokens = store.tokens.sort(["example_id", "pos"])
    ids = np.zeros((store.n_examples, store.manifest.width), dtype=np.int64)
    ids[tokens["example_id"].to_numpy(), tokens["pos"].to_numpy()] = tokens["token_id"].to_numpy()
    if arch.norm is None:
        scale = np.ones(pos.shape)
    else:
        scale = store.read("ln_final.hook_scale").astype(np.float64)[rows, pos, 0]
    dot = lambda v: np.einsum("esd,esd->es", v, u) / scale  # noqa: E731
    want = {"embed": dot(p["embed.W_E"][ids[rows, pos]])}
    if "pos_embed.W_pos" in p and arch.pos_in_resid:
        want["pos_embed"] = dot(p["pos_embed.W_pos"][pos])
    for layer in range(arch.n_layers):
        z = store.read(f"blocks.{layer}.attn.hook_z").astype(np.float64)[rows, pos]  # [e, s, head, d_head]
        heads = np.einsum("eshd,hdm->eshm", z, p[f"blocks.{layer}.attn.W_O"])
        b_o = np.broadcast_to(p[f"blocks.{layer}.attn.b_O"], u.shape)
        if level == "layer":
            want[f"attn{layer}"] = dot(heads.sum(2) + b_o)
        else:
            for h in range(heads.shape[2]):
                want[f"L{layer}H{h}"] = dot(heads[:, :, h])
            want[f"attn_bias{layer}"] = dot(b_o)
        if not arch.has_mlp:
            continue
        post = store.read(f"blocks.{layer}.mlp.hook_post").astype(np.float64)[rows, pos]  # [e, s, d_mlp]
        w_out, b_out = p[f"blocks.{layer}.mlp.W_out"], np.broadcast_to(p[f"blocks.{layer}.mlp.b_out"], u.shape)
        if level == "neuron":
            per = np.einsum("esn,nm,esm->esn", post, w_out, u) / scale[..., None]
            for j in range(per.shape[-1]):
                want[f"L{layer}N{j}"] = per[..., j]
            want[f"mlp_bias{layer}"] = dot(b_out)
        else:
            want[f"mlp{layer}"] = dot(post @ w_out + b_out)
    return want


def _got(table: pl.DataFrame, shape: tuple[int, int], slot: str) -> dict[str, np.ndarray]:
    """{component: [example, slot]} from a dla table (one target row per slot)."""
    table = table.sort(["example_id", slot, "component"])
    return {c[0]: g["value"].to_numpy().reshape(shape)
            for c, g in table.group_by(["component"], maintain_order=True)}


def _compare(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str) -> None:
    assert sorted(got) == sorted(want), what
    scale = max(float(np.abs(v).max()) for v in want.values())
    for c in want:
        np.testing.assert_allclose(got[c], want[c], rtol=1e-5, atol=1e-6 * scale, err_msg=f"{what} {c}")


@pytest.mark.parametrize("name,level", [(n, lv) for n in STORES for lv in LEVELS
                                        if not (n == "list_update" and lv == "neuron")])  # attention-only
def test_answer_targets_equal_numpy_from_the_stored_arrays(stores, name, level):
    store = actstore.open_store(stores[name][1])
    w_u = store.param("unembed.W_U").astype(np.float64)
    pos, correct, counter = _answers(store)
    shape = pos.shape
    _compare(_got(dla(store, level, "correct"), shape, "answer_idx"), _oracle(store, level, w_u.T[correct], pos),
             f"{name} {level} correct")
    _compare(_got(dla(store, level, "diff"), shape, "answer_idx"),
             _oracle(store, level, w_u.T[correct] - w_u.T[counter], pos), f"{name} {level} diff")
    token = int(correct[-1, -1])  # one token id for every answer
    _compare(_got(dla(store, level, token), shape, "answer_idx"),
             _oracle(store, level, np.broadcast_to(w_u.T[token], (*shape, w_u.shape[0])), pos),
             f"{name} {level} token")


@pytest.mark.parametrize("name", list(STORES))
def test_token_lists_and_positions_equal_numpy(stores, name):
    store = actstore.open_store(stores[name][1])
    w_u = store.param("unembed.W_U").astype(np.float64)
    e = store.n_examples
    lengths = store.examples.sort("example_id")["length"].to_numpy()
    last = (lengths - 1)[:, None]  # pos=-1: each example's last token
    toks = [7, 1, 3]  # not in id order (a token listed twice is refused)
    table = dla(store, "head", toks, pos=-1)
    assert table.height == e * len(toks) * len(_oracle(store, "head", np.zeros((e, 1, w_u.shape[0])), last))
    for i, t in enumerate(toks):
        rows = table.filter(pl.int_range(pl.len()).over(["example_id", "component"]) == i)
        assert (rows["token"] == t).all()
        _compare(_got(rows, (e, 1), "pos"), _oracle(store, "head", np.broadcast_to(w_u.T[t], (e, 1, w_u.shape[0])),
                                                   last), f"{name} token list #{i}")
    expr = dla(store, "layer", "W_U[:,3] - W_U[:,1]", pos=-1)
    _compare(_got(expr, (e, 1), "pos"),
             _oracle(store, "layer", np.broadcast_to(w_u.T[3] - w_u.T[1], (e, 1, w_u.shape[0])), last),
             f"{name} expression")
    if store.n_answers > 1:  # answer=1 with pos: the second answer's tokens read at the last position
        _, correct, counter = _answers(store)
        got = dla(store, "head", "diff", pos=-1, answer=1)
        _compare(_got(got, (e, 1), "pos"),
                 _oracle(store, "head", (w_u.T[correct[:, 1]] - w_u.T[counter[:, 1]])[:, None], last),
                 f"{name} answer=1")


@pytest.mark.parametrize("name", list(STORES))
def test_every_path_of_a_store_gives_the_same_table(stores, name, monkeypatch):
    _, one, many, _ = stores[name]
    queries = [("head", "correct", None), ("layer", "diff", None), ("head", "diff", None), ("head", 4, None),
               ("head", [5, 2], -1), ("layer", "correct", "all")]
    if name != "list_update":
        queries.append(("neuron", "correct", None))
    want = [dla(actstore.open_store(many), *q[:2], pos=q[2]) for q in queries]
    for threads in (1, 4):
        monkeypatch.setattr(chunks_mod, "READ_THREADS", threads)
        for path in (one, many):
            store = actstore.open_store(path)
            for again in range(2):  # a repeated query on one open store reuses what it kept
                for q, w in zip(queries, want):
                    assert dla(store, *q[:2], pos=q[2]).equals(w), (name, threads, path.name, again, q)
        # interleaved with another store's queries (the kept frames and answer positions of another array)
        other = actstore.open_store(stores["addition" if name != "addition" else "days"][1])
        for q, w in zip(queries, want):
            dla(other, "head", "correct")
            assert dla(actstore.open_store(one), *q[:2], pos=q[2]).equals(w), (name, threads, "interleaved", q)


def _tl_heads(model: HookedTransformer, store) -> tuple[np.ndarray, np.ndarray]:
    """TransformerLens's per-head and per-layer decomposition at the answers, read along W_U[:, correct] and
    divided by its own ln_final.hook_scale: ([example, answer, layer * head], [example, answer, n_stack])."""
    tokens = store.tokens.sort(["example_id", "pos"])
    ids = np.zeros((store.n_examples, store.manifest.width), dtype=np.int64)
    ids[tokens["example_id"].to_numpy(), tokens["pos"].to_numpy()] = tokens["token_id"].to_numpy()
    lengths = store.examples.sort("example_id")["length"].to_numpy()
    mask = torch.tensor(np.arange(ids.shape[1])[None, :] < lengths[:, None], dtype=torch.long)
    pos, correct, _ = _answers(store)
    rows = np.arange(store.n_examples)[:, None]
    u = model.W_U.detach().double().numpy().T[correct]  # [e, a, d_model]
    with torch.no_grad():  # (stack_head_results multiplies by W_O: not in inference mode)
        _, cache = model.run_with_cache(torch.tensor(ids), attention_mask=mask)
        scale = cache["ln_final.hook_scale"].double().numpy()[rows, pos, 0]
        heads = cache.stack_head_results(layer=-1).double().numpy()[:, rows, pos]  # [layer * head, e, a, d_model]
        resid = cache.decompose_resid(layer=-1, incl_embeds=True).double().numpy()[:, rows, pos]
    read = lambda stack: np.moveaxis(np.einsum("ceam,eam->cea", stack, u) / scale, 0, -1)  # noqa: E731
    return read(heads), read(resid)


@pytest.mark.parametrize("name", ["addition", "days", "addition_long"])
def test_head_and_layer_dla_equal_transformer_lens(stores, name):
    model, _, _, f32 = stores[name]
    store = actstore.open_store(f32)  # float32 activations: TransformerLens's own values, as computed
    heads, resid = _tl_heads(model, store)
    pos = _answers(store)[0]
    got = _got(dla(store, "head"), pos.shape, "answer_idx")
    n_heads = store.arch.n_heads
    for layer in range(store.arch.n_layers):
        for h in range(n_heads):
            np.testing.assert_allclose(got[f"L{layer}H{h}"], heads[..., layer * n_heads + h], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name} L{layer}H{h}")
    layers = _got(dla(store, "layer"), pos.shape, "answer_idx")
    # decompose_resid: embed, pos_embed, then attn_out and mlp_out per layer (attn_out includes b_O)
    order = ["embed", "pos_embed"] + [c for layer in range(store.arch.n_layers) for c in (f"attn{layer}",
                                                                                          f"mlp{layer}")]
    assert resid.shape[-1] == len(order)
    for i, c in enumerate(order):
        np.testing.assert_allclose(layers[c], resid[..., i], rtol=1e-4, atol=1e-5, err_msg=f"{name} {c}")

"""actstore.ingest on tiny real TransformerLens models: stored values, tables, manifest, resume, refusals."""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from helpers import tree_bytes
from tiny_models import tiny_model

import actstore
from actstore.datasets import get_task
from actstore.errors import (InvalidParameterError, StoreExistsError, StoreWriteError, UnknownHookError,
                             UnknownTaskError)
from actstore.store.commits import commit_path


@pytest.fixture(scope="module")
def models() -> dict:
    return {k: tiny_model(k) for k in ("addition", "list_update", "brackets")}


def cache_of(model, tokens: np.ndarray, lengths: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    toks = torch.tensor(tokens)
    mask = (torch.arange(toks.shape[1])[None] < torch.tensor(lengths)[:, None]).long()
    _, cache = model.run_with_cache(toks, attention_mask=mask, names_filter=names)
    return {k: v.numpy() for k, v in cache.items()}


@pytest.mark.parametrize("kind", ["addition", "list_update"])
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float16", 2e-3)])
def test_stored_activations_equal_run_with_cache(tmp_path, models, kind, dtype, tol):
    model = models[kind]
    store = actstore.ingest(kind, model, 70, 3, tmp_path / "s", hooks=["default", "resid_post"], dtype=dtype,
                            chunk=32, batch=16, quiet=True)
    data = get_task(kind).generate(70, 3)
    cache = cache_of(model, data.tokens, data.lengths, store.hooks)
    assert store.n_examples == 70 and len(store.hooks) == len(cache)
    for name in store.hooks:
        got = store.read(name)
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got.astype(np.float32), cache[name], atol=tol, rtol=tol, err_msg=name)
    if kind == "list_update":  # attention-only, no LayerNorm: no MLP or scale hooks
        assert not any("mlp" in h or "scale" in h for h in store.hooks)


def test_bidirectional_padding_is_masked(tmp_path, models):
    """Brackets (bidirectional, right-padded): real positions equal an unpadded run of each example."""
    model = models["brackets"]
    store = actstore.ingest("brackets", model, 12, 0, tmp_path / "s", dtype="float32", chunk=8, batch=4,
                            quiet=True, task_params={"max_len": 40})
    data = get_task("brackets", max_len=40).generate(12, 0)
    assert len(set(data.lengths.tolist())) > 1, "need examples of different lengths"
    z = store.read("blocks.2.attn.hook_z")
    pattern = store.read("blocks.1.attn.hook_pattern")
    for e in range(12):
        length = int(data.lengths[e])
        _, cache = model.run_with_cache(torch.tensor(data.tokens[e:e + 1, :length]))
        np.testing.assert_allclose(z[e, :length], cache["blocks.2.attn.hook_z"][0].numpy(), atol=1e-5)
        np.testing.assert_allclose(pattern[e, :, :length, :length], cache["blocks.1.attn.hook_pattern"][0].numpy(),
                                   atol=1e-6)
        assert not pattern[e, :, :length, length:].any()  # nothing attends to padding
    out = store.outputs
    logits = torch.stack([model(torch.tensor(data.tokens[e:e + 1, :data.lengths[e]]))[0, 0] for e in range(12)])
    np.testing.assert_allclose(out["correct_logit"].to_numpy(),
                               logits.gather(1, torch.tensor(data.answer_tokens[:, :1])).squeeze(1).detach().numpy(),
                               atol=1e-5)


def test_answer_positions_select_the_answer_rows(tmp_path, models):
    model = models["addition"]
    store = actstore.ingest("addition", model, 40, 1, tmp_path / "s",
                            hooks=["z", "pattern", "blocks.1.mlp.hook_post:all"],
                            positions="answer", dtype="float32", chunk=16, batch=8, quiet=True)
    data = get_task("addition").generate(40, 1)
    cache = cache_of(model, data.tokens, data.lengths, store.hooks)
    ap = data.answer_pos  # [example, answer]
    rows = np.arange(40)[:, None]
    z = store.hook_info("blocks.0.attn.hook_z")
    assert z.positions == "answer" and z.dims == ("example", "answer", "head", "d_head") and z.shape == (40, 4, 3, 16)
    np.testing.assert_allclose(store.read("blocks.0.attn.hook_z"), cache["blocks.0.attn.hook_z"][rows, ap], atol=1e-5)
    p = store.hook_info("blocks.1.attn.hook_pattern")
    assert p.dims == ("example", "head", "answer", "key_pos") and p.shape == (40, 3, 4, 14)
    want = cache["blocks.1.attn.hook_pattern"].transpose(0, 2, 1, 3)[rows, ap].transpose(0, 2, 1, 3)
    np.testing.assert_allclose(store.read("blocks.1.attn.hook_pattern"), want, atol=1e-6)
    post = store.hook_info("blocks.1.mlp.hook_post")
    assert post.positions == "all" and post.shape == (40, 14, 64)


def test_outputs_and_meta_tables(tmp_path, models):
    model = models["addition"]
    store = actstore.ingest("addition", model, 50, 2, tmp_path / "s", chunk=16, batch=16, quiet=True)
    data = get_task("addition").generate(50, 2)
    logits = model(torch.tensor(data.tokens))  # [example, pos, vocab]
    at = logits[torch.arange(50)[:, None], torch.tensor(data.answer_pos)]  # [example, answer, vocab]
    correct = torch.tensor(data.answer_tokens)
    out = store.outputs
    assert out.height == 200 and out["example_id"].to_list() == [e for e in range(50) for _ in range(4)]
    assert out["answer_pos"].to_list() == data.answer_pos.reshape(-1).tolist()
    c_logit = at.gather(-1, correct[..., None])[..., 0]
    np.testing.assert_allclose(out["correct_logit"].to_numpy(), c_logit.reshape(-1).detach().numpy(), atol=1e-5)
    logp = at.log_softmax(-1).gather(-1, correct[..., None])[..., 0].reshape(-1).detach().numpy()
    np.testing.assert_allclose(out["loss"].to_numpy(), -logp, atol=1e-5)
    np.testing.assert_allclose(out["prob"].to_numpy(), np.exp(logp), atol=1e-6)
    assert out["rank"].to_list() == (at > c_logit[..., None]).sum(-1).reshape(-1).tolist()
    assert out["correct"].to_list() == (at.argmax(-1) == correct).reshape(-1).tolist()
    # the counterfactual is the corrupted twin's sum digit
    assert out["counter_token"].to_list() == data.counter_tokens.reshape(-1).tolist()
    k_logit = at.gather(-1, torch.tensor(data.counter_tokens)[..., None])[..., 0].reshape(-1).detach().numpy()
    np.testing.assert_allclose(out["logit_diff"].to_numpy(), c_logit.reshape(-1).detach().numpy() - k_logit,
                               atol=1e-5)
    assert out.columns == ["example_id", "answer_idx", "answer_pos", "correct_token", "counter_token",
                           "correct_logit", "counter_logit", "logit_diff", "prob", "rank", "loss", "correct",
                           "corrupted_correct_logit", "corrupted_counter_logit", "corrupted_logit_diff",
                           "corrupted_loss"]

    ex = store.examples
    assert ex.columns[:2] == ["example_id", "split"] and ex["example_id"].to_list() == list(range(50))
    assert ex.drop("split").equals(data.to_frame())
    tok = store.tokens
    assert (tok.height == int(data.lengths.sum())
            and tok.columns == ["example_id", "pos", "token_id", "str_token", "role"])
    first = tok.filter(pl.col("example_id") == 7).sort("pos")
    assert first["token_id"].to_list() == data.tokens[7].tolist() and first["role"].to_list() == data.roles[7].tolist()


def test_counterfactual_outputs(tmp_path, models):
    store = actstore.ingest("brackets", models["brackets"], 20, 0, tmp_path / "s", chunk=8, quiet=True)
    out = store.outputs
    assert out["counter_token"].null_count() == 0
    np.testing.assert_allclose(out["logit_diff"].to_numpy(),
                               (out["correct_logit"] - out["counter_logit"]).to_numpy(), atol=1e-6)


def twin_baselines(model, data) -> dict[str, np.ndarray]:
    """The clean answer and counter tokens read on a plain (unhooked) masked run of the twins: [example * answer]."""
    toks = torch.tensor(data.corrupted_tokens)
    mask = (torch.arange(toks.shape[1])[None] < torch.tensor(data.lengths)[:, None]).long()
    if model.cfg.attention_dir == "bidirectional":  # one unpadded run per example (TransformerLens masks causal only)
        at = torch.stack([model(toks[e:e + 1, :data.lengths[e]])[0, data.answer_pos[e]]
                          for e in range(len(data))]).double()
    else:
        logits = model(toks, attention_mask=mask).double()
        at = logits[torch.arange(len(data))[:, None], torch.tensor(data.answer_pos)]
    correct = at.gather(-1, torch.tensor(data.answer_tokens)[..., None])[..., 0]
    counter = at.gather(-1, torch.tensor(data.counter_tokens)[..., None])[..., 0]
    loss = -at.log_softmax(-1).gather(-1, torch.tensor(data.answer_tokens)[..., None])[..., 0]
    return {k: v.reshape(-1).detach().numpy() for k, v in
            (("correct_logit", correct), ("counter_logit", counter), ("logit_diff", correct - counter), ("loss", loss))}


@pytest.mark.parametrize("kind, params", [("addition", {}), ("list_update", {}), ("brackets", {"max_len": 40})])
def test_twin_baselines_are_the_twins_own_run(tmp_path, models, kind, params):
    """corrupted_* outputs: the clean correct / counter tokens on the twin's run, batch by batch (brackets:
    bidirectional and right-padded, so the twin's run is masked like the clean one)."""
    n = 21
    store = actstore.ingest(kind, models[kind], n, 4, tmp_path / "s", chunk=8, batch=4, dtype="float32",
                            quiet=True, task_params=params)
    data = get_task(kind, **params).generate(n, 4)
    ex = store.examples
    assert ex["corrupted_tokens"].to_list() == [row[:k].tolist() for row, k in
                                                zip(data.corrupted_tokens, data.lengths)]
    out = store.outputs
    want = twin_baselines(models[kind], data)
    for col, values in want.items():
        assert out.schema[f"corrupted_{col}"] == pl.Float32
        np.testing.assert_allclose(out[f"corrupted_{col}"].to_numpy(), values, atol=2e-5, err_msg=col)
    # the twin's run is another run: its logits differ from the clean ones where the twin's answer does
    assert not np.allclose(out["corrupted_correct_logit"].to_numpy(), out["correct_logit"].to_numpy())


def test_twin_baselines_without_counter_or_twin_are_null(tmp_path, models):
    from no_counter import AdditionNoCounter, no_counter_task

    with no_counter_task() as task:
        store = actstore.ingest(task, models["addition"], 12, 0, tmp_path / "nocounter", chunk=8, quiet=True)
    out = store.outputs
    assert out["corrupted_correct_logit"].null_count() == out["corrupted_loss"].null_count() == 0
    assert out["corrupted_counter_logit"].null_count() == out["corrupted_logit_diff"].null_count() == 48

    class NoTwin(AdditionNoCounter):
        name = "addition_no_twin"

        def generate(self, n, seed, tokenizer=None):
            return dataclasses.replace(super().generate(n, seed, tokenizer), task=self.name, corrupted_tokens=None)

    from actstore.datasets import TASKS, register_task

    register_task(NoTwin)
    try:
        store = actstore.ingest("addition_no_twin", models["addition"], 12, 0, tmp_path / "notwin", chunk=8,
                                quiet=True)
    finally:
        del TASKS["addition_no_twin"]
    out, ex = store.outputs, store.examples
    assert ex["corrupted_tokens"].null_count() == 12
    for col in ("correct_logit", "counter_logit", "logit_diff", "loss"):
        assert out.schema[f"corrupted_{col}"] == pl.Float32 and out[f"corrupted_{col}"].null_count() == 48


@pytest.mark.parametrize("kind", ["addition", "list_update", "brackets"])
def test_manifest_records_the_run_and_an_exact_decomposition(tmp_path, models, kind):
    store = actstore.ingest(kind, models[kind], 24, 5, tmp_path / "s", chunk=8, batch=8, quiet=True,
                            model_spec=f"tiny:{kind}")
    m = store.manifest
    assert ((m.task, m.seed, m.n, m.chunk, m.batch, m.dtype, m.model_spec)
            == (kind, 5, 24, 8, 8, "float16", f"tiny:{kind}"))
    assert m.decomposition["status"] == "ok" and m.decomposition["max_abs_error"] < 1e-4
    assert m.model_config["n_layers"] == models[kind].cfg.n_layers
    assert store.config["attention_dir"] == models[kind].cfg.attention_dir
    assert m.processing["fold_ln"] is (kind != "list_update")  # no LayerNorm to fold in list_update
    assert set(store.param_names) == {n for n, _ in models[kind].named_parameters()}
    np.testing.assert_array_equal(store.param("unembed.W_U"), models[kind].W_U.detach().numpy())


def test_resume_rewrites_lost_chunks_byte_identically(tmp_path, models):
    model = models["addition"]
    kw = dict(chunk=16, batch=8, quiet=True)
    ref = actstore.ingest("addition", model, 70, 0, tmp_path / "ref", **kw).path
    out = tmp_path / "crashed"
    shutil.copytree(ref, out)
    # a crash after chunk 2: commits 3-4 and the completion record gone, chunk 3's z half-written,
    # chunk 4's part missing
    (out / "_commits/complete.json").unlink()
    commit_path(out, 4).unlink()
    commit_path(out, 3).unlink()
    z3 = out / "acts/blocks.0.attn.hook_z/c/3/0/0/0"
    z3.write_bytes(z3.read_bytes()[:50])
    (out / "meta/examples/part-00004.parquet").unlink()
    assert actstore.open_store(out).n_examples == 48
    resumed = actstore.ingest("addition", model, 70, 0, out, **kw)
    assert resumed.n_examples == 70
    assert tree_bytes(out) == tree_bytes(ref)


def test_resume_of_a_store_written_before_the_twins_keeps_its_columns(tmp_path, models, monkeypatch):
    """A store an earlier actstore left half-written (meta without corrupted_tokens, twin_* labels and the
    corrupted_* outputs) resumes with the columns it has: every part alike, the same bytes as the earlier
    version's complete run; committed parts with columns this version does not make are refused."""
    import actstore.ingest.run as run
    from actstore.ingest.meta import examples_frame, outputs_frame

    def old_columns(frame):
        return frame.select([c for c in frame.columns if not c.startswith(("corrupted_", "twin_"))])

    model, kw = models["addition"], dict(chunk=16, batch=8, quiet=True)
    with monkeypatch.context() as m:  # the earlier version's tables
        m.setattr(run, "examples_frame", lambda data, start: old_columns(examples_frame(data, start)))
        m.setattr(run, "outputs_frame", lambda data, start, out: old_columns(outputs_frame(data, start, out)))
        ref = actstore.ingest("addition", model, 70, 0, tmp_path / "ref", **kw).path
    out = tmp_path / "old"
    shutil.copytree(ref, out)
    (out / "_commits/complete.json").unlink()
    for k in (3, 4):
        commit_path(out, k).unlink()
    resumed = actstore.ingest("addition", model, 70, 0, out, **kw)
    assert resumed.n_examples == 70 and "corrupted_tokens" not in resumed.examples.columns
    assert "corrupted_loss" not in resumed.outputs.columns and "twin_a" not in resumed.examples.columns
    assert tree_bytes(out) == tree_bytes(ref)

    # committed parts with a column this ingest does not make: refused, nothing changed
    odd = tmp_path / "odd"
    with monkeypatch.context() as m:
        m.setattr(run, "outputs_frame", lambda data, start, out: outputs_frame(data, start, out).with_columns(
            pl.lit(1.0).alias("future_column")))
        actstore.ingest("addition", model, 70, 0, odd, **kw)
    (odd / "_commits/complete.json").unlink()
    commit_path(odd, 4).unlink()
    before = tree_bytes(odd)
    with pytest.raises(StoreExistsError, match=r"meta/outputs has columns this ingest does not make \(future_column\)"):
        actstore.ingest("addition", model, 70, 0, odd, **kw)
    assert tree_bytes(odd) == before


def test_inline_writer_gives_the_same_bytes(tmp_path, models):
    kw = dict(chunk=16, batch=8, quiet=True)
    a = actstore.ingest("addition", models["addition"], 40, 0, tmp_path / "a", **kw).path
    b = actstore.ingest("addition", models["addition"], 40, 0, tmp_path / "b", background=False, **kw).path
    assert tree_bytes(a) == tree_bytes(b)


def test_rerun_of_another_run_is_refused_and_overwrite_replaces(tmp_path, models):
    model = models["addition"]
    out = tmp_path / "s"
    actstore.ingest("addition", model, 30, 0, out, chunk=16, quiet=True)
    before = tree_bytes(out)
    with pytest.raises(StoreExistsError, match=r"differs in: .*seed.*--overwrite"):
        actstore.ingest("addition", model, 30, 1, out, chunk=16, quiet=True)
    with pytest.raises(StoreExistsError, match="chunk"):
        actstore.ingest("addition", model, 30, 0, out, chunk=8, quiet=True)
    assert tree_bytes(out) == before
    again = actstore.ingest("addition", model, 30, 0, out, chunk=16, quiet=True)  # same run: nothing to do
    assert again.n_examples == 30 and tree_bytes(out) == before
    replaced = actstore.ingest("addition", model, 30, 1, out, chunk=16, quiet=True, overwrite=True)
    assert replaced.manifest.seed == 1 and replaced.n_examples == 30


def test_same_spec_with_other_weights_is_another_run(tmp_path, models):
    model = copy.deepcopy(models["addition"])
    out = tmp_path / "s"
    first = actstore.ingest("addition", model, 20, 0, out, chunk=8, quiet=True, model_spec="mine")
    assert len(first.manifest.weights_sha256) == 64
    with torch.no_grad():
        model.blocks[0].attn.W_O[0, 0, 0] += 1e-3  # retrained or reprocessed: same spec, other weights
    with pytest.raises(StoreExistsError, match=r"differs in: .*weights_sha256"):
        actstore.ingest("addition", model, 20, 0, out, chunk=8, quiet=True, model_spec="mine")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n=0), InvalidParameterError, "n must be a positive integer"),
    (dict(seed=-1), InvalidParameterError, "seed must be a non-negative"),
    (dict(chunk=0), InvalidParameterError, "chunk must be a positive integer"),
    (dict(batch=-2), InvalidParameterError, "batch must be a positive integer"),
    (dict(dtype="bfloat16"), InvalidParameterError, "dtype must be one of"),
    (dict(positions="some"), InvalidParameterError, "positions must be one of"),
    (dict(hooks=["blocks.0.attn.hook_zz"]), UnknownHookError, "closest valid: blocks.0.attn.hook_z"),
    (dict(hooks=["patern"]), UnknownHookError, "hook_pattern"),
    (dict(hooks=["z:first"]), InvalidParameterError, "':all' or ':answer'"),
    (dict(task="additon"), UnknownTaskError, "did you mean 'addition'"),
    (dict(task_params={"digits": 0}), InvalidParameterError, "digits"),
    (dict(device="tpu"), InvalidParameterError, "device must be"),
])
def test_bad_input_fails_cleanly(tmp_path, models, kwargs, error, match):
    args = dict(task="addition", model=models["addition"], n=10, seed=0, out=tmp_path / "s", quiet=True)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        actstore.ingest(**args)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_bad_output_paths(tmp_path, models):
    model = models["addition"]
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(InvalidParameterError, match="is a file"):
        actstore.ingest("addition", model, 10, 0, f, quiet=True)
    with pytest.raises(InvalidParameterError, match="not a writable directory"):
        actstore.ingest("addition", model, 10, 0, f / "store", quiet=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.md").write_text("mine")
    with pytest.raises(StoreExistsError, match="not an actstore store"):
        actstore.ingest("addition", model, 10, 0, other, quiet=True, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "other"]
    assert [p.name for p in other.iterdir()] == ["notes.md"]
    if Path("/proc/self").is_dir():  # a directory the OS refuses to create anything in, even for root
        with pytest.raises(StoreWriteError, match="cannot create a store at '/proc/actstore-test'"):
            actstore.ingest("addition", model, 10, 0, "/proc/actstore-test", quiet=True)


def test_model_that_does_not_fit_the_task(tmp_path, models):
    with pytest.raises(InvalidParameterError, match="outside the model's vocabulary"):
        actstore.ingest("list_update", models["addition"], 10, 0, tmp_path / "s", quiet=True)
    with pytest.raises(InvalidParameterError, match="n_ctx"):
        actstore.ingest("brackets", models["addition"], 10, 0, tmp_path / "s", quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_memory_is_bounded_by_chunks_not_n(tmp_path, models, monkeypatch):
    """However many chunks, the loop allocates the same few chunk buffers and recycles them."""
    from actstore.ingest import run

    calls = []
    original = run._alloc_buffers
    monkeypatch.setattr(run, "_alloc_buffers", lambda m, pinned: calls.append(original(m, pinned)) or calls[-1])
    store = actstore.ingest("addition", models["addition"], 200, 0, tmp_path / "s", chunk=8, batch=8, quiet=True)
    assert store.n_examples == 200 and store.manifest.n_chunks == 25
    assert len(calls) == 1 and len(calls[0]) == run.WRITE_QUEUE_DEPTH + 2
    assert all(buf.shape[0] == 8 for bufs in calls[0] for buf in bufs.values())


def test_a_chunk_too_big_fails_before_anything_is_written(tmp_path, models):
    from actstore.ingest import run

    store = actstore.ingest("addition", models["addition"], 10, 0, tmp_path / "s", chunk=10**9, quiet=True)
    assert store.manifest.chunk == 10  # a chunk is capped at the dataset
    widest = max(h.example_bytes for h in store.manifest.hooks)
    too_many = run.MAX_CHUNK_BYTES // widest + 1
    # (a dataset that big is over the generation cap with this tiny model, so the check is called directly)
    with pytest.raises(InvalidParameterError, match=r"over the 2 GiB the codec compresses at once; pass chunk <="):
        run._check_chunk_size(dataclasses.replace(store.manifest, chunk=too_many))
    run._check_chunk_size(dataclasses.replace(store.manifest, chunk=too_many - 1))


def test_progress_bar_and_quiet(tmp_path, models, capsys):
    actstore.ingest("addition", models["addition"], 40, 0, tmp_path / "a", chunk=16, quiet=False)
    err = capsys.readouterr().err
    assert "ingest" in err and "40/40" in err and "ex/s" in err and "MB/s" in err
    actstore.ingest("addition", models["addition"], 40, 0, tmp_path / "b", chunk=16, quiet=True)
    assert capsys.readouterr().err == ""


def test_auto_chunk_is_a_power_of_two_under_64_mib(tmp_path, models):
    store = actstore.ingest("addition", models["addition"], 300, 0, tmp_path / "s", quiet=True)
    per_example = sum(h.example_bytes for h in store.manifest.hooks)
    assert store.chunk_size == 300  # tiny model: everything fits in one chunk (capped at n)
    assert store.manifest.batch == 64
    from actstore.ingest.run import _auto_chunk

    big = _auto_chunk(list(store.manifest.hooks) * 40, 10**6)  # a heavier model's hooks
    assert big & (big - 1) == 0 and big * per_example * 40 <= 64 << 20 < 2 * big * per_example * 40


def test_a_second_concurrent_ingest_is_refused(tmp_path, models):
    from actstore.store.lock import store_lock

    out = tmp_path / "s"
    actstore.ingest("addition", models["addition"], 20, 0, out, chunk=8, quiet=True)
    (out / "_commits/complete.json").unlink()  # as if interrupted before its last commit
    commit_path(out, 2).unlink()
    with store_lock(out):  # as a running ingest holds it
        with pytest.raises(StoreExistsError, match="another ingest is writing"):
            actstore.ingest("addition", models["addition"], 20, 0, out, chunk=8, quiet=True)
    assert actstore.ingest("addition", models["addition"], 20, 0, out, chunk=8, quiet=True).n_examples == 20


def test_hooks_a_model_never_runs(tmp_path):
    model = tiny_model("attn_only_ln")
    assert "blocks.0.ln2.hook_scale" in model.hook_dict
    store = actstore.ingest("addition", model, 10, 0, tmp_path / "s", quiet=True)  # default set: ln2 dropped
    assert "blocks.0.ln2.hook_scale" not in store.hooks and "blocks.0.ln1.hook_scale" in store.hooks
    assert store.manifest.decomposition["status"] == "ok"
    with pytest.raises(InvalidParameterError, match="'blocks.0.ln2.hook_scale' did not fire"):
        actstore.ingest("addition", model, 10, 0, tmp_path / "t", hooks=["z", "blocks.0.ln2.hook_scale"], quiet=True)
    assert not (tmp_path / "t").exists()


def test_non_utf8_paths_are_refused_before_anything_is_written(tmp_path, models):
    out = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/st\xffore"))
    with pytest.raises(InvalidParameterError, match="is not valid UTF-8"):
        actstore.ingest("addition", models["addition"], 10, 0, out, quiet=True)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidParameterError, match="store path .* is not valid UTF-8"):
        actstore.open_store(out)

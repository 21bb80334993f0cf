"""`actstore ingest`, `actstore info`, `actstore verify` through the command line entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import processed_model

import actstore
from actstore.cli import main


def zoo_addition_available() -> bool:
    try:
        from actstore.models import load_model

        load_model("zoo:addition")
    except (ImportError, actstore.ActstoreError):
        return False
    return True


needs_zoo = pytest.mark.skipif(not zoo_addition_available(), reason="zoo:addition's trained weights are not installed")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    model = processed_model(
        n_layers=1, n_heads=2, d_model=16, d_head=8, d_mlp=32, n_ctx=16, d_vocab=12, act_fn="relu",
        normalization_type="LN", seed=0)
    out = tmp_path_factory.mktemp("cli") / "store"
    actstore.ingest("addition", model, 20, 0, out, chunk=8, quiet=True, model_spec="tiny")
    return out


def one_line_error(capsys, argv: list[str], *fragments: str) -> None:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    lines = [ln for ln in lines if "Loading weights" not in ln]  # the model loader's own progress bar
    assert len(lines) == 1 and lines[0].startswith(f"actstore {argv[0]}: error: "), lines
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.mark.parametrize("extra, fragments", [
    (["--n", "0"], ["n must be a positive integer"]),
    (["--seed", "-3"], ["seed must be a non-negative integer"]),
    (["--chunk", "0"], ["chunk must be a positive integer"]),
    (["--batch", "0"], ["batch must be a positive integer"]),
    (["--task", "additon"], ["unknown task 'additon'", "did you mean 'addition'"]),
    (["--param", "digits=0"], ["digits must be an integer"]),
    (["--device", "tpu"], ["device must be auto, cpu or cuda"]),
    (["--model", "zoo:nope"], ["nope"]),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, extra, fragments):
    out = tmp_path / "s"
    argv = ["ingest", "--task", "addition", "--model", "zoo:addition", "--n", "10", "--out", str(out), "--quiet"]
    for i in range(0, len(extra), 2):  # later options override earlier ones
        argv += extra[i:i + 2]
    one_line_error(capsys, argv, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_and_missing_arguments(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("")
    one_line_error(capsys, ["ingest", "--task", "addition", "--model", "zoo:addition", "--n", "5",
                            "--out", str(f / "s")], "not a writable directory")
    one_line_error(capsys, ["ingest", "--model", "zoo:addition", "--n", "5", "--out", str(tmp_path / "s")], "--task")


def test_info_prints_manifest_sizes_and_counts(store_path, capsys):
    assert main(["info", str(store_path)]) == 0
    out = capsys.readouterr().out
    assert "examples   20 of 20 committed (3/3 chunks of 8)" in out
    assert "task       addition digits=4 max_operand=5000 seed=0" in out
    assert "blocks.0.attn.hook_z" in out and "ln_final.hook_scale" in out and "activations" in out
    assert main(["info", str(store_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_examples"] == 20 and info["manifest"]["chunk"] == 8
    assert {a["name"] for a in info["arrays"]} == set(actstore.open_store(store_path).hooks)


def test_verify_ok_then_names_the_bad_chunk(store_path, tmp_path, capsys):
    assert main(["verify", str(store_path)]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(store_path, bad)
    chunk = bad / "acts/blocks.0.mlp.hook_post/c/2/0/0"
    data = bytearray(chunk.read_bytes())
    data[-9] ^= 1
    chunk.write_bytes(bytes(data))
    assert main(["verify", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "BAD: acts/blocks.0.mlp.hook_post chunk 2: checksum" in err


def test_info_and_verify_of_a_non_store(tmp_path, capsys):
    one_line_error(capsys, ["info", str(tmp_path / "none")], "no store at", "does not exist")
    one_line_error(capsys, ["verify", str(tmp_path)], "is not an actstore store")


@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory) -> Path:
    """A tiny random GPT-2 saved as a local Hugging Face checkpoint (a model spec load_model accepts)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=12, n_positions=16,
                                       bos_token_id=0, eos_token_id=0))
    out = tmp_path_factory.mktemp("ckpt") / "gpt2-tiny"
    model.save_pretrained(out)
    return out


@pytest.mark.parametrize("source", ["checkpoint", pytest.param("zoo:addition", marks=needs_zoo)])
def test_ingest_from_the_command_line_and_resume(tmp_path, capsys, request, source):
    spec = str(request.getfixturevalue("gpt2_checkpoint")) if source == "checkpoint" else source
    out = tmp_path / "s"
    base = ["ingest", "--task", "addition", "--model", spec, "--n", "48", "--out", str(out), "--chunk", "16",
            "--batch", "16", "--hooks", "default", "resid_post:answer"]
    argv = base + ["--seed", "1"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "stored 48 examples" in err and "decomposition max error" in err and "ex/s" in err
    store = actstore.open_store(out)
    assert store.n_examples == 48 and store.hook_info("blocks.0.hook_resid_post").positions == "answer"
    assert store.manifest.model_spec == spec and store.manifest.decomposition["status"] == "ok"
    assert store.manifest.processing["fold_ln"] is True
    assert main(["verify", str(out)]) == 0 and capsys.readouterr().out.strip().endswith("OK")
    assert main(argv + ["--quiet"]) == 0  # same run: resumes (nothing left), no progress or summary
    err = capsys.readouterr().err
    assert "ingest" not in err and "stored" not in err
    one_line_error(capsys, base + ["--seed", "2"], "(differs in: seed)", "--overwrite")
    one_line_error(capsys, argv + ["--hooks", "blocks.0.attn.hook_zz"], "closest valid: blocks.0.attn.hook_z")
    assert main(base + ["--seed", "2", "--overwrite", "--quiet"]) == 0
    assert actstore.open_store(out).manifest.seed == 2

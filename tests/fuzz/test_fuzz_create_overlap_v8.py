"""A new store created beside the first chunk (ingest.creation, hook shapes from probe.config_shapes) against the
tree before it (c836571, run in a second interpreter from `git archive`): the same bytes for many hook kinds
(pattern, attn_scores, hook_q/k/v, MLP pre/post/pre_linear, LayerNorm/RMS scales and normalized, embed,
pos_embed, resid, ':answer' hooks), models (gated MLP, RMSNorm, grouped-query attention, rotary, bidirectional,
d_vocab_out != d_vocab), tasks with twins and per-example answer positions, and batch/chunk layouts where the
first batch is or is not the whole first chunk. Then kills at the new points (the skeleton waiting for the
first batch's word; the published store before its first chunk) are resumed to the same bytes, and
`actstore verify` says one clear line about what the kill left.

The tree before runs in a subprocess, this one in the test's process meanwhile, both with one torch thread and the same
model builder (BUILD below), so only the package differs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actstore.cli import main as cli_main
from tests.helpers import tree_bytes

# a comparison with the tree before a one-time change (c836571, run in a second interpreter): in the
# slow set (pytest -m slow), out of the default run's 10 minutes
pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
OLD = "c836571"

# the model builder and the cases, run by both trees (a script file, so no actstore import leaks in from here)
BUILD = r'''
import json, os, signal, sys, warnings
import torch
torch.set_num_threads(1)
warnings.filterwarnings("ignore")
from transformer_lens import HookedTransformer, HookedTransformerConfig
import actstore

def build(cfg, seed):
    model = HookedTransformer(HookedTransformerConfig(**cfg, seed=seed, device="cpu"))
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                p.normal_(0, 0.2, generator=gen)
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    return model.eval()

def run(case, out):
    model = build(case["cfg"], case["seed"])
    actstore.ingest(case["task"], model, case["n"], 3, out, model_spec="tiny:" + case["name"], quiet=True,
                    task_params=case.get("task_params"), **case["kw"])
'''
DRIVER = BUILD + r'''
mode, spec = sys.argv[1], json.loads(sys.argv[2])
if mode == "kill":  # die at a new point of the overlapped creation
    case, out, where = spec
    if where == "before_publish":
        from actstore.ingest import creation
        real = creation.Creation._wait_allowed
        def wait_then_die(self):
            real(self)  # the first batch checked the shapes: the skeleton is built and allowed
            os.kill(os.getpid(), signal.SIGKILL)
        creation.Creation._wait_allowed = wait_then_die
    else:
        from actstore.store import writer
        def die(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        writer.ChunkWriter.write_chunk = die
    run(case, out)
    sys.exit(3)  # not killed: the point was never reached
# the tree before wrote params/ chunk keys as c/0/0; this one (weight_cache.LAYOUT 2) writes c.0.0: the same
# arrays and bytes otherwise, so the tree before writes them this tree's way here
import zarr
from actstore.store import weight_cache
write_params, create_array = weight_cache.write_params, zarr.Group.create_array
def dotted(self, *a, **k):
    return create_array(self, *a, chunk_key_encoding={"name": "default", "separator": "."}, **k)
def write_dotted(folder, params, codec):
    zarr.Group.create_array = dotted
    try:
        write_params(folder, params, codec)
    finally:
        zarr.Group.create_array = create_array
weight_cache.write_params = write_dotted
for case, out in spec:
    run(case, out)
print("ran", len(spec))
'''

LN_MLP = dict(n_layers=2, n_heads=3, d_model=48, d_head=16, d_mlp=64, n_ctx=16, d_vocab=12, act_fn="gelu",
              normalization_type="LN")
CASES = [
    # batch 5 inside chunk 16: the first batch made before the loop is not the whole chunk
    dict(name="ln_mlp", cfg=LN_MLP, task="addition", n=37, seed=0, kw=dict(
        chunk=16, batch=5, hooks=["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_z", "blocks.0.mlp.hook_post",
                                  "blocks.1.ln1.hook_scale", "ln_final.hook_scale", "hook_embed", "hook_pos_embed"])),
    dict(name="qkv", cfg=LN_MLP, task="addition", n=20, seed=1, kw=dict(
        chunk=8, batch=8, outputs=False, hooks=[
            "blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v", "blocks.1.attn.hook_attn_scores",
            "blocks.0.ln2.hook_normalized", "blocks.1.hook_resid_mid", "blocks.0.hook_attn_out",
            "blocks.0.hook_mlp_out", "blocks.1.mlp.hook_pre", "blocks.1.hook_resid_post"])),
    dict(name="gated_rms", cfg=dict(n_layers=2, n_heads=2, d_model=32, d_head=16, d_mlp=40, n_ctx=16, d_vocab=12,
                                    act_fn="silu", gated_mlp=True, normalization_type="RMS"),
         task="addition", n=19, seed=2, kw=dict(chunk=32, batch=4, hooks=[
             "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_pre_linear", "blocks.1.mlp.hook_post",
             "blocks.1.ln2.hook_scale", "blocks.1.attn.hook_z:answer", "ln_final.hook_normalized"])),
    dict(name="gqa", cfg=dict(n_layers=2, n_heads=4, n_key_value_heads=2, d_model=32, d_head=8, d_mlp=32, n_ctx=16,
                              d_vocab=12, act_fn="relu", normalization_type="LN"),
         task="addition", n=17, seed=3, kw=dict(chunk=8, batch=3, hooks=[
             "blocks.0.attn.hook_k", "blocks.0.attn.hook_v", "blocks.1.attn.hook_z", "blocks.1.attn.hook_pattern"])),
    dict(name="rotary", cfg=dict(n_layers=2, n_heads=2, d_model=32, d_head=16, d_mlp=32, n_ctx=16, d_vocab=12,
                                 act_fn="gelu", normalization_type="LN", positional_embedding_type="rotary",
                                 rotary_dim=8),
         task="addition", n=12, seed=4, kw=dict(chunk=12, batch=12, hooks=[
             "blocks.0.attn.hook_q", "blocks.1.attn.hook_z", "blocks.0.attn.hook_rot_k"])),
    # the decomposition check runs (default hooks): the creation thread is not held for the first batch
    dict(name="vocab_out", cfg=dict(n_layers=2, n_heads=3, d_model=48, d_head=16, n_ctx=14, d_vocab=12,
                                    d_vocab_out=10, attn_only=True, normalization_type="LN"),
         task="addition", n=33, seed=5, kw=dict(chunk=16, batch=16, dtype="float32", top_k=3)),
    dict(name="bidir", cfg=dict(n_layers=2, n_heads=2, d_model=24, d_head=12, d_mlp=24, n_ctx=42, d_vocab=5,
                                d_vocab_out=2, act_fn="relu", normalization_type="LN", attention_dir="bidirectional"),
         task="brackets", task_params={"max_len": 40}, n=21, seed=6, kw=dict(
             chunk=8, batch=3, hooks=["blocks.0.attn.hook_attn_scores", "blocks.1.attn.hook_pattern",
                                      "blocks.1.hook_resid_post"])),
    # twins (corrupted pass) and answer positions that differ per example
    dict(name="days", cfg=dict(n_layers=2, n_heads=2, d_model=32, d_head=16, d_mlp=32, n_ctx=16, d_vocab=256,
                               act_fn="gelu", normalization_type="LN"),
         task="days", n=14, seed=7, kw=dict(chunk=8, batch=8, positions="answer",
                                            hooks=["blocks.0.attn.hook_z", "blocks.1.mlp.hook_post"])),
]
# the automatic chunk (no chunk given): the first batch of 4 is not the chunk
CASES.append(dict(name="auto_chunk", cfg=LN_MLP, task="addition", n=21, seed=10, kw=dict(
    batch=4, hooks=["blocks.1.attn.hook_z", "blocks.0.mlp.hook_post"])))
# the config's shape is wrong (split q/k/v input: ln1's scale is per head): the first batch finds it and the
# ingest probes instead
CASES.append(dict(name="split_qkv", cfg={**LN_MLP, "use_split_qkv_input": True}, task="addition", n=10, seed=8,
                  kw=dict(chunk=8, batch=4, hooks=["blocks.0.ln1.hook_scale", "blocks.1.attn.hook_z"])))
KILLED = [("before_publish", CASES[0]), ("first_write", CASES[7])]


def _old_tree(tmp: Path) -> Path:
    """The package as of OLD, extracted under tmp (skips where this checkout has no such commit)."""
    dest = tmp / "old"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", OLD, "actstore"], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"no commit {OLD} in this checkout: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def _beside(parent: Path, name: str) -> list[str]:
    """What a creation or removal of the store `name` left beside it (its lock file is not that)."""
    return sorted(q.name for q in parent.iterdir()
                  if q.name.startswith(f".{name}.") and (".creating-" in q.name or ".deleting-" in q.name))


def _verify(path: Path) -> tuple[int, str]:
    """`actstore verify PATH` in this interpreter: (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(["verify", str(path)])
    return code, err.getvalue()


def _start(tmp: Path, tree: Path, mode: str, spec: object, name: str) -> tuple[subprocess.Popen, str]:
    """The driver in a fresh interpreter whose `actstore` is the one under `tree` (cwd: a folder without one);
    its output goes to tmp/NAME.out and .err."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    with open(tmp / f"{name}.out", "w") as out, open(tmp / f"{name}.err", "w") as err:
        proc = subprocess.Popen([sys.executable, str(tmp / "driver.py"), mode, json.dumps(spec)], cwd=tmp, env=env,
                                stdout=out, stderr=err)
    return proc, name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{case name: (old store, new store)} and {kill point: (killed-then-resumed store, old store, verify run)}."""
    tmp = tmp_path_factory.mktemp("overlap_v8")
    (tmp / "driver.py").write_text(DRIVER)
    old_tree = _old_tree(tmp)
    old = {c["name"]: tmp / f"old_{c['name']}" for c in CASES}
    new = {c["name"]: tmp / f"new_{c['name']}" for c in CASES}
    killed = {where: tmp / f"killed_{where}" for where, _ in KILLED}
    procs = [_start(tmp, old_tree, "run", [(c, str(old[c["name"]])) for c in CASES], "old")]
    procs += [_start(tmp, ROOT, "kill", [c, str(killed[where]), where], where) for where, c in KILLED]
    # meanwhile this tree, in this process (one torch thread, as the driver): every case fresh
    here: dict = {}
    exec(BUILD, here)  # noqa: S102 - the driver's own builder, so both trees get the same models
    for c in CASES:
        here["run"](c, str(new[c["name"]]))
    errs = []
    for p, name in procs:
        p.wait(timeout=300)
        errs.append((tmp / f"{name}.err").read_text())
    assert procs[0][0].returncode == 0, errs[0][-3000:]
    for (p, _), (where, _), err in zip(procs[1:], KILLED, errs[1:]):
        assert p.returncode == -9, f"{where}: not killed ({p.returncode}): {err[-2000:]}"
    left = {where: (path.exists(), _beside(tmp, path.name)) for where, path in killed.items()}
    verify = {where: _verify(path) for where, path in killed.items()}
    for where, c in KILLED:  # the killed stores resumed: the same ingest again
        here["run"](c, str(killed[where]))
    leftovers = [name for c in CASES for name in _beside(tmp, f"new_{c['name']}")]
    leftovers += [name for path in killed.values() for name in _beside(tmp, path.name)]
    return old, new, killed, left, verify, leftovers


@pytest.mark.parametrize("name", [c["name"] for c in CASES])
def test_a_store_created_beside_the_first_chunk_has_the_old_trees_bytes(runs, name):
    old, new = runs[0], runs[1]
    a, b = tree_bytes(old[name]), tree_bytes(new[name])
    assert sorted(a) == sorted(b)
    differ = sorted(k for k in a if a[k] != b[k])
    assert differ == [], differ


def test_kills_at_the_new_points_resume_to_the_old_trees_bytes(runs):
    old, _, killed, left, verify, leftovers = runs
    # before publish: only the skeleton beside the path; after it: an empty store, which verify names
    exists, beside = left["before_publish"]
    assert not exists and len(beside) == 1 and ".creating-" in beside[0], left
    assert left["first_write"] == (True, []), left
    for where, (code, err) in verify.items():
        lines = [ln for ln in err.strip().splitlines() if ln]
        assert code != 0 and len(lines) == 1, (where, code, err[-1500:])
    for where, case in KILLED:
        a, b = tree_bytes(old[case["name"]]), tree_bytes(killed[where])
        assert sorted(a) == sorted(b), where
        assert sorted(k for k in a if a[k] != b[k]) == [], where
    assert leftovers == []  # the resumes removed the skeleton the first kill left

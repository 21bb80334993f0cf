"""The seed examples (examples/seed*.py) run end to end, and the numbers they print agree with an
independent computation from the store they wrote (raw activations and weights, plain numpy).

Each script runs as a subprocess with a small --n, a tmp --out and --charts. A script whose zoo
weights are not installed is skipped. Their patching and ablation numbers (sweeps of
actstore.interventions on the first SWEEP_N examples) are recomputed here with plain
TransformerLens hooks on the zoo model, on the examples' clean and corrupted tokens.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import actstore
from actstore.models.zoo import weight_paths

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SWEEP_N = 16  # examples each patching / ablation sweep of an example runs on here (--sweep-n)


def needs_zoo(name: str) -> pytest.MarkDecorator:
    missing = [p for p in weight_paths(name) if not p.exists()]
    first_missing = missing[0].name if missing else ''
    return pytest.mark.skipif(bool(missing), reason=f"zoo:{name} weights not installed ({first_missing})")


def run_example(script: str, tmp_path: Path, n: int, *extra: str) -> tuple[str, dict[str, str], object, Path]:
    """Run examples/<script> with --n/--out/--charts in tmp_path; returns stdout, key numbers, the
    store and the charts directory."""
    out, charts = tmp_path / "store", tmp_path / "charts"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--n", str(n), "--out", str(out),
                           "--charts", str(charts), "--sweep-n", str(SWEEP_N), *extra], check=False,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout, key_numbers(proc.stdout), actstore.open_store(out), charts


def key_numbers(stdout: str) -> dict[str, str]:
    assert "== Key numbers" in stdout, stdout
    tail = stdout.split("== Key numbers", 1)[1]
    return dict(re.findall(r"^  (\S+) = (.+)$", tail, flags=re.MULTILINE))


def assert_charts(charts: Path, names: list[str]) -> None:
    for name in names:
        for ext in (".png", ".html"):
            p = charts / f"{name}{ext}"
            assert p.exists() and p.stat().st_size > 0, f"chart {p} missing or empty"
    assert (charts / f"{names[0]}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def answer_rows(store) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(example_id, answer_pos, correct_token) of every answer, in example then answer order."""
    o = store.outputs.sort("example_id", "answer_idx")
    return (o.get_column("example_id").to_numpy(), o.get_column("answer_pos").to_numpy(),
            o.get_column("correct_token").to_numpy())


def head_dla(store, layer: int, diff: bool = False) -> np.ndarray:
    """[answer row, head] direct attribution of each head of `layer` to the correct token (diff: correct
    minus counterfactual), from the stored hook_z, W_O, W_U and (if the model has LayerNorm) the final
    LN scale."""
    e, p, t = answer_rows(store)
    z = store.read(f"blocks.{layer}.attn.hook_z").astype(np.float64)[e, p]  # [row, head, d_head]
    w_o = store.param(f"blocks.{layer}.attn.W_O").astype(np.float64)  # [head, d_head, d_model]
    w_u = store.param("unembed.W_U").astype(np.float64)[:, t]  # [d_model, row]
    if diff:
        cf = store.outputs.sort("example_id", "answer_idx").get_column("counter_token").to_numpy()
        w_u = w_u - store.param("unembed.W_U").astype(np.float64)[:, cf]
    out = np.einsum("rhd,hdm,mr->rh", z, w_o, w_u)
    if "ln_final.hook_scale" in store.hooks:
        out /= store.read("ln_final.hook_scale").astype(np.float64)[e, p, 0][:, None]
    return out


def logit_minus_bias(store, diff: bool = False) -> np.ndarray:
    """Stored correct logit (diff: logit difference) minus its b_U part, per answer row."""
    o = store.outputs.sort("example_id", "answer_idx")
    b_u = store.param("unembed.b_U").astype(np.float64)
    correct = o.get_column("correct_token").to_numpy()
    if diff:
        counter = o.get_column("counter_token").to_numpy()
        return o.get_column("logit_diff").to_numpy().astype(np.float64) - (b_u[correct] - b_u[counter])
    return o.get_column("correct_logit").to_numpy().astype(np.float64) - b_u[correct]


def all_heads(store, diff: bool = False) -> dict[str, np.ndarray]:
    """'LxHy' -> [answer row] direct attribution of every head."""
    return {f"L{layer}H{h}": v for layer in range(int(store.config["n_layers"]))
            for h, v in enumerate(head_dla(store, layer, diff).T)}


def mlp_dla(store, diff: bool = False) -> dict[str, np.ndarray]:
    """'mlpL' -> [answer row] direct attribution of each MLP (post @ W_out, without b_out) over the final LN scale."""
    e, p, t = answer_rows(store)
    w_u = store.param("unembed.W_U").astype(np.float64)
    d = w_u[:, t]
    if diff:
        d = d - w_u[:, store.outputs.sort("example_id", "answer_idx").get_column("counter_token").to_numpy()]
    s = store.read("ln_final.hook_scale").astype(np.float64)[e, p, 0]
    out = {}
    for layer in range(int(store.config["n_layers"])):
        post = store.read(f"blocks.{layer}.mlp.hook_post").astype(np.float64)[e, p]  # [row, d_mlp]
        w_out = store.param(f"blocks.{layer}.mlp.W_out").astype(np.float64)  # [d_mlp, d_model]
        out[f"mlp{layer}"] = np.einsum("rn,nm,mr->r", post, w_out, d) / s
    return out


def role_attention(store, layer: int, head: int, q_col: str, k_col: str) -> np.ndarray:
    """[example] attention prob of head (layer, head) from position examples[q_col] to examples[k_col]."""
    ex = store.examples.sort("example_id")
    q, k = ex.get_column(q_col).to_numpy(), ex.get_column(k_col).to_numpy()
    pat = store.read(f"blocks.{layer}.attn.hook_pattern")  # [e, head, q, k]
    return pat[np.arange(len(q)), head, q, k].astype(np.float64)


def close(printed: str, expected: float, rel: float = 2e-3, abs_: float = 2e-3) -> None:
    assert float(printed) == pytest.approx(expected, rel=rel, abs=abs_), (printed, expected)


# --- patching / ablation recomputed with TransformerLens hooks ----------------------------------

@functools.lru_cache(maxsize=None)
def zoo_model(spec: str) -> Any:
    from actstore.models import load_model

    return load_model(spec)


class Twins:
    """The first `k` examples of a store as arrays: clean and corrupted tokens (right-padded; the model
    is causal and every metric is read at or before an example's last token), answer positions, answer
    and counter tokens [k, answer]."""

    def __init__(self, store, k: int) -> None:
        ex = store.examples.sort("example_id").head(k)
        self.k, self.ex = k, ex
        width = int(ex.get_column("length").max())

        def pad(col: str) -> np.ndarray:
            out = np.zeros((k, width), dtype=np.int64)
            for i, row in enumerate(ex.get_column(col).to_list()):
                out[i, :len(row)] = row
            return out

        self.clean, self.corrupted = pad("tokens"), pad("corrupted_tokens")
        self.answer_pos = np.stack(ex.get_column("answer_positions").to_list()).astype(np.int64)
        self.answer = np.stack(ex.get_column("answer_tokens").to_list()).astype(np.int64)
        self.counter = np.stack(ex.get_column("counter_tokens").to_list()).astype(np.int64)
        self.net = zoo_model(store.manifest.model_spec)

    def cache(self, tokens: np.ndarray) -> Any:
        import torch

        with torch.no_grad():
            return self.net.run_with_cache(torch.as_tensor(tokens))[1]

    def metric(self, tokens: np.ndarray, metric: str, hooks: list | None = None) -> np.ndarray:
        """[k, answer] logit_diff (answer - counter) or loss (-log p(answer)) at the answer positions."""
        import torch

        with torch.no_grad():
            logits = self.net.run_with_hooks(torch.as_tensor(tokens), fwd_hooks=hooks or []).double()
        at = logits[torch.arange(self.k)[:, None], torch.as_tensor(self.answer_pos)]  # [k, answer, vocab]
        ans = at.gather(-1, torch.as_tensor(self.answer)[..., None])[..., 0]
        if metric == "loss":
            return (-(at.log_softmax(-1).gather(-1, torch.as_tensor(self.answer)[..., None])[..., 0])).numpy()
        return (ans - at.gather(-1, torch.as_tensor(self.counter)[..., None])[..., 0]).numpy()


def put(source: Any, index: Any) -> Any:
    """A hook that writes source[index] into the activation at `index` (source: a tensor of its shape;
    index: a tuple of slices, ints and integer arrays)."""
    import torch

    index = tuple(torch.as_tensor(np.array(i)) if isinstance(i, np.ndarray) else i for i in index)

    def hook(x: Any, hook: Any) -> Any:
        x[index] = source[index].to(x.dtype)
        return x
    return hook


def denoise_score(t: Twins, hooks: list, mask: np.ndarray | None = None) -> float:
    """Mean normalised score (patched - corrupted) / (clean - corrupted) of the logit difference over
    the answers `mask` selects (default all) where clean and corrupted differ."""
    clean, corrupted = t.metric(t.clean, "logit_diff"), t.metric(t.corrupted, "logit_diff")
    patched = t.metric(t.corrupted, "logit_diff", hooks)
    keep = (clean != corrupted) if mask is None else mask & (clean != corrupted)
    return float(((patched - corrupted) / np.where(keep, clean - corrupted, 1.0))[keep].mean())


def head_of(name: str) -> tuple[int, int]:
    layer, head = (int(x) for x in re.fullmatch(r"L(\d+)H(\d+)", name).groups())
    return layer, head


@pytest.mark.slow  # a seed script end to end (90-150 s at load 12); test_seed003_addition runs by default
@needs_zoo("list_update")
def test_seed000_list_update(tmp_path: Path) -> None:
    stdout, keys, store, charts = run_example("seed000_list_update.py", tmp_path, 200)
    assert store.complete and store.n_examples == 200 and store.manifest.task == "list_update"
    close(keys["accuracy"], store.outputs.get_column("correct").mean())
    # the components sum to the stored logits minus b_U (fp16 activations: loose tolerance)
    target = logit_minus_bias(store).mean()
    close(keys["dla_sum_mean"], target, rel=1e-2)
    close(keys["logit_lens_final_mean"], target, rel=1e-2)
    # per-head DLA recomputed from hook_z and the weights (no LayerNorm in this model)
    n_layers = int(store.config["n_layers"])
    per_head = {f"L{layer}H{h}": v.mean() for layer in range(n_layers)
                for h, v in enumerate(head_dla(store, layer).T)}
    best = max(per_head, key=per_head.get)
    assert keys["top_head"] == best
    close(keys["top_head_dla_mean"], per_head[best], rel=1e-2)
    # attention on the answer's source token (a_i, or elt at the updated slot) from the raw patterns
    e, p, _ = answer_rows(store)
    ex = store.examples.sort("example_id")
    idx = ex.get_column("idx").to_numpy()[e]
    slot = p - p.min()
    roles = store.tokens.filter(pl.col("example_id") == 0).sort("pos").get_column("role").to_list()
    src = np.where(slot == idx, roles.index("elt"), np.array([roles.index(f"a{i}") for i in slot]))
    masses = {}
    for layer in range(n_layers):
        pat = store.read(f"blocks.{layer}.attn.hook_pattern").astype(np.float64)  # [e, head, q, k]
        for h in range(pat.shape[1]):
            masses[f"L{layer}H{h}"] = pat[e, h, p, src].mean()
    best = max(masses, key=masses.get)
    assert keys["source_attention_head"] == best
    close(keys["source_attention_mass"], masses[best], rel=5e-3)
    # OV circuit of the last layer's head 0, from the stored weights
    last = n_layers - 1
    w_e, w_u = store.param("embed.W_E").astype(np.float64), store.param("unembed.W_U").astype(np.float64)
    ov = (w_e[:50] @ store.param(f"blocks.{last}.attn.W_V")[0] @ store.param(f"blocks.{last}.attn.W_O")[0]
          @ w_u[:, :50])
    close(keys[f"ov_L{last}H0_top1_diagonal"], float((ov.argmax(1) == np.arange(50)).mean()))
    assert "Logit lens" in stdout and "Full OV circuits" in stdout
    # activation patching at the updated slot (answer_idx == idx), recomputed with TransformerLens hooks
    t = Twins(store, SWEEP_N)
    k, rows = SWEEP_N, np.arange(SWEEP_N)
    idx = t.ex.get_column("idx").to_numpy()
    slot = np.arange(store.n_answers)[None, :] == idx[:, None]  # [k, answer]: the updated slot
    upd = (store.outputs.filter(pl.col("example_id") < k).join(t.ex.select("example_id", "idx"), on="example_id")
           .filter(pl.col("answer_idx") == pl.col("idx")))
    close(keys["patch_clean_logit_diff"], upd.get_column("logit_diff").mean(), rel=1e-3)
    close(keys["patch_corrupted_logit_diff"], t.metric(t.corrupted, "logit_diff")[slot].mean(), rel=1e-3)
    labels = [r if roles.count(r) == 1 else f"{r}{p}" for p, r in enumerate(roles)]
    query = t.answer_pos[rows, idx]  # where the updated slot's answer is read
    cc = t.cache(t.clean)
    target, label = keys["patch_v_top"].split()
    layer, head = head_of(target)
    where = query if label == "query" else np.full(k, labels.index(label))
    name = f"blocks.{layer}.attn.hook_v"
    close(keys["patch_v_top_score"], denoise_score(t, [(name, put(cc[name], (rows, where, head)))], slot),
          rel=1e-3, abs_=1e-3)
    name = "blocks.1.hook_resid_pre"
    close(keys["patch_resid_pre_L1_query"], denoise_score(t, [(name, put(cc[name], (rows, query)))], slot),
          rel=1e-3, abs_=1e-3)
    assert "Activation patching" in stdout
    assert_charts(charts, ["logit_lens", "dla_by_head_changed", "attention", "ov_L1H0", "patch_resid_pre", "patch_v"])


@pytest.mark.slow  # 40 s: three ingests of the seed script
@needs_zoo("list_update")
def test_seed000_reuses_then_replaces_store(tmp_path: Path) -> None:
    out = tmp_path / "store"
    args = [sys.executable, str(EXAMPLES / "seed000_list_update.py"), "--out", str(out), "--sweep-n", "8"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.run([*args, "--n", "64"], check=False, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0 and "store: ingested 64" in first.stdout, first.stderr
    again = subprocess.run([*args, "--n", "64"], check=False, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "store: reusing" in again.stdout
    # the reused store holds the patching sweeps: the rerun reads the same sweeps back
    sweeps = re.compile(r"^sweep ([0-9a-f]{16}): ", flags=re.MULTILINE)
    assert sweeps.findall(first.stdout) and sweeps.findall(again.stdout) == sweeps.findall(first.stdout)
    assert set(sweeps.findall(first.stdout)) <= {p.name for p in (out / "interventions").iterdir()}
    # a larger --n grows the store (its first 64 examples and their stored sweeps stay); another seed replaces it
    grown = subprocess.run([*args, "--n", "96"], check=False, capture_output=True, text=True, env=env, timeout=600)
    assert grown.returncode == 0 and "store: ingested 96" in grown.stdout, grown.stderr
    assert sweeps.findall(grown.stdout) == sweeps.findall(first.stdout)
    assert actstore.open_store(out).n_examples == 96
    other = subprocess.run([*args, "--n", "96", "--seed", "1"], check=False, capture_output=True, text=True, env=env,
                           timeout=600)
    assert other.returncode == 0 and "holds another run; replacing it" in other.stdout


@needs_zoo("addition")
def test_seed003_addition(tmp_path: Path) -> None:
    stdout, keys, store, charts = run_example("seed003_addition.py", tmp_path, 300)
    assert store.complete and store.n_examples == 300 and store.manifest.task == "addition"
    close(keys["accuracy"], store.outputs.get_column("correct").mean())
    target = logit_minus_bias(store).mean()
    close(keys["dla_sum_mean"], target, rel=1e-2)
    close(keys["path_sum_mean"], target, rel=1e-2)
    # per-head DLA per digit recomputed from hook_z, W_O, W_U and the final LN scale
    o = store.outputs.sort("example_id", "answer_idx")
    digit = o.get_column("answer_idx").to_numpy()
    n_layers = int(store.config["n_layers"])
    vals = {f"L{layer}H{h}": v for layer in range(n_layers) for h, v in enumerate(head_dla(store, layer).T)}
    for i in range(store.n_answers):
        means = {k: v[digit == i].mean() for k, v in vals.items()}
        best = max(means, key=means.get)
        assert keys[f"top_head_c{i}"] == best
        close(keys[f"top_head_c{i}_dla"], means[best], rel=1e-2)
    # carry split: the head whose mean DLA moves most between carry and no carry, per digit
    ex = store.examples.sort("example_id")
    e = o.get_column("example_id").to_numpy()
    for i in range(store.n_answers - 1):
        carry = ex.get_column(f"carry_{i}").to_numpy()[e]
        rows = digit == i
        deltas = {k: v[rows & carry].mean() - v[rows & ~carry].mean() for k, v in vals.items()}
        best = max(deltas, key=lambda k: abs(deltas[k]))
        assert keys[f"carry_delta_head_c{i}"] == best
        close(keys[f"carry_delta_c{i}"], deltas[best], rel=2e-2, abs_=2e-2)
    assert "Path DLA" in stdout and "breakdown(dla, group_by='carry_i')" in stdout
    # DLA toward every digit: summed over components, the correct digit's row is the answer's logit less b_U
    close(keys["dla_digits_correct_sum_mean"], target, rel=1e-2)
    assert keys["dla_digits_top_frequency"] == "1" and float(keys["dla_digits_top_frequency_share"]) > 0.5
    # topk: the rank-0 token is the correct digit exactly where the outputs table says the answer is correct
    top1 = store.topk.filter(pl.col("rank") == 0).join(
        store.outputs.select("example_id", "answer_idx", "correct_token", "correct", "prob"),
        on=["example_id", "answer_idx"])
    assert top1.height == store.n_examples * store.n_answers
    hit = top1.get_column("token_id").to_numpy() == top1.get_column("correct_token").to_numpy()
    assert np.array_equal(hit, top1.get_column("correct").to_numpy())
    close(keys["topk_top1_correct"], hit.mean())
    right = top1.filter(pl.col("correct"))  # there the top-1 probability is the correct token's
    np.testing.assert_allclose(right.get_column("prob").to_numpy(), right.get_column("prob_right").to_numpy(),
                               rtol=1e-5)
    close(keys["topk_mean_top1_prob"], top1.get_column("prob").mean(), rel=1e-5)
    # mean ablation of each head's z: the loss increase per digit, recomputed with TransformerLens hooks that
    # write the mean of the stored hook_z over every example of the store at each position
    import torch

    t = Twins(store, SWEEP_N)
    clean_loss = t.metric(t.clean, "loss")  # [k, digit]
    dloss = {}
    for layer in range(n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        mean = torch.as_tensor(store.read(name).astype(np.float64).mean(0), dtype=torch.float32)  # [pos, head, d]
        src = mean[None].expand(SWEEP_N, *mean.shape)
        for h in range(mean.shape[1]):
            hooks = [(name, put(src, (slice(None), slice(None), h)))]
            dloss[f"L{layer}H{h}"] = t.metric(t.clean, "loss", hooks) - clean_loss
    overall = {name: v.mean() for name, v in dloss.items()}
    best = max(overall, key=overall.get)
    assert keys["ablate_z_top_head"] == best
    close(keys["ablate_z_top_dloss"], overall[best], rel=1e-3)
    for i in range(store.n_answers):
        per = {name: v[:, i].mean() for name, v in dloss.items()}
        best = max(per, key=per.get)
        assert keys[f"ablate_z_top_head_c{i}"] == best
        close(keys[f"ablate_z_top_dloss_c{i}"], per[best], rel=1e-3)
    # the carry split, from the examples' carry_i labels
    for i in range(store.n_answers - 1):
        carry = t.ex.get_column(f"carry_{i}").to_numpy()
        deltas = {name: v[carry, i].mean() - v[~carry, i].mean() for name, v in dloss.items()}
        best = max(deltas, key=lambda name: abs(deltas[name]))
        assert keys[f"ablate_carry_head_c{i}"] == best
        close(keys[f"ablate_carry_delta_c{i}"], deltas[best], rel=1e-3, abs_=1e-3)
    assert_charts(charts, ["dla_heads", "dla_carry_split", "attention_L1_from_eq", "path_dla",
                           "ablation_z_carry_split"])


@pytest.mark.slow  # a seed script end to end (90-150 s at load 12); test_seed003_addition runs by default
@needs_zoo("brackets")
def test_seed002_brackets(tmp_path: Path) -> None:
    stdout, keys, store, charts = run_example("seed002_brackets.py", tmp_path, 300)
    assert store.complete and store.n_examples == 300 and store.manifest.task == "brackets"
    ex = store.examples.sort("example_id")
    o = store.outputs.sort("example_id").join(ex.select("example_id", "balanced", "failure"), on="example_id")
    close(keys["accuracy"], o.get_column("correct").mean())
    for failure, part in o.group_by("failure"):
        close(keys[f"accuracy_{failure[0]}"], part.get_column("correct").mean())
    # logit(unbalanced) - logit(balanced) minus the b_U difference, from the stored outputs
    balanced = o.get_column("balanced").to_numpy()
    unb = int(o.filter(~pl.col("balanced")).get_column("correct_token")[0])
    bal = int(o.filter(pl.col("balanced")).get_column("correct_token")[0])
    b_u = store.param("unembed.b_U").astype(np.float64)
    sign = np.where(balanced, -1.0, 1.0)
    unb_dir = sign * o.get_column("logit_diff").to_numpy() - (b_u[unb] - b_u[bal])
    close(keys["unbalanced_dir_sum_mean_unbalanced"], unb_dir[~balanced].mean(), rel=1e-2)
    close(keys["unbalanced_dir_sum_mean_balanced"], unb_dir[balanced].mean(), rel=1e-2)
    # each head's and MLP's direct write at position 0 onto W_U[:, unb] - W_U[:, bal], over the final LN scale
    w_u = store.param("unembed.W_U").astype(np.float64)
    d = w_u[:, unb] - w_u[:, bal]
    s = store.read("ln_final.hook_scale").astype(np.float64)[:, 0, 0]
    n_layers = int(store.config["n_layers"])
    values: dict[str, np.ndarray] = {}
    for layer in range(n_layers):
        z = store.read(f"blocks.{layer}.attn.hook_z").astype(np.float64)[:, 0]  # [e, head, d_head]
        w_o = store.param(f"blocks.{layer}.attn.W_O").astype(np.float64)
        for h, v in enumerate(np.einsum("ehd,hdm,m->he", z, w_o, d)):
            values[f"L{layer}H{h}"] = v / s
        post = store.read(f"blocks.{layer}.mlp.hook_post").astype(np.float64)[:, 0]  # [e, d_mlp]
        values[f"mlp{layer}"] = post @ store.param(f"blocks.{layer}.mlp.W_out").astype(np.float64) @ d / s
    sep = {k: v[~balanced].mean() - v[balanced].mean() for k, v in values.items()}
    heads = {k: v for k, v in sep.items() if k.startswith("L")}
    assert keys["top_head"] == max(heads, key=heads.get)
    close(keys["top_head_separation"], max(heads.values()), rel=1e-2)
    assert keys["top_component"] == max(sep, key=sep.get)
    # attention to '(' keys from position 0: the head whose mean mass varies most across failure types
    roles = store.tokens.sort("example_id", "pos")
    width = store.hook_info("blocks.0.attn.hook_pattern").shape[-1]
    is_open = np.zeros((store.n_examples, width), dtype=bool)
    sel = roles.filter(pl.col("role") == "open")
    is_open[sel.get_column("example_id").to_numpy(), sel.get_column("pos").to_numpy()] = True
    failure = ex.get_column("failure").to_numpy()
    ranges = {}
    for layer in range(n_layers):
        pat = store.read(f"blocks.{layer}.attn.hook_pattern").astype(np.float64)[:, :, 0, :]  # [e, head, k]
        mass = (pat * is_open[:, None, :]).sum(-1)  # [e, head]
        for h in range(mass.shape[1]):
            means = [mass[failure == f, h].mean() for f in np.unique(failure)]
            ranges[f"L{layer}H{h}"] = max(means) - min(means)
    assert keys["failure_sensitive_head"] == max(ranges, key=ranges.get)
    # neurons at position 0: Pearson r of their projection onto the unbalanced direction with open_proportion
    y = ex.get_column("open_proportion").to_numpy()
    best_direct = 0.0
    for layer in range(n_layers):
        post = store.read(f"blocks.{layer}.mlp.hook_post").astype(np.float64)[:, 0]
        proj = post * (store.param(f"blocks.{layer}.mlp.W_out").astype(np.float64) @ d)[None, :] / s[:, None]
        for n_ in range(proj.shape[1]):
            if proj[:, n_].std() > 0:
                r = np.corrcoef(proj[:, n_], y)[0, 1]
                if abs(r) > abs(best_direct):
                    best_direct, best_name = r, f"L{layer}N{n_}"
    if keys["top_neuron_read"].startswith("direct"):
        assert keys["top_neuron"] == best_name
        close(keys["top_neuron_r"], best_direct, rel=1e-2)
    else:
        assert abs(float(keys["top_neuron_r"])) >= abs(best_direct) - 1e-6
    assert "Attention from position 0" in stdout
    # cos(v_L, v_R): the images of '(' and ')' under head 0.0's OV, from W_E, W_V and W_O
    tk = store.tokens
    t_open, t_close = (int(tk.filter(pl.col("role") == r).get_column("token_id")[0]) for r in ("open", "close"))
    ov = store.param("blocks.0.attn.W_V").astype(np.float64)[0] @ store.param("blocks.0.attn.W_O").astype(np.float64)[0]
    w_e = store.param("embed.W_E").astype(np.float64)
    v_l, v_r = w_e[t_open] @ ov, w_e[t_close] @ ov
    close(keys["cos_vL_vR"], v_l @ v_r / np.linalg.norm(v_l) / np.linalg.norm(v_r), rel=1e-6)
    assert 0.9 < float(keys["ln_final_fit_r2"]) <= 1.0
    # neuron projections onto the saved direction 'unbalanced' (read as is): post[e, 0, n] * (W_out[L, n] . v)
    from actstore.store.directions import load_direction

    saved = load_direction(store.path, "unbalanced")
    close(keys["unbalanced_fit_norm"], np.linalg.norm(saved.vector), rel=1e-9)
    seps = {}
    for layer in range(n_layers):
        post = store.read(f"blocks.{layer}.mlp.hook_post").astype(np.float64)[:, 0]
        proj = post * (store.param(f"blocks.{layer}.mlp.W_out").astype(np.float64) @ saved.vector)[None, :]
        for n_, v in enumerate(proj[~balanced].mean(0) - proj[balanced].mean(0)):
            seps[f"L{layer}N{n_}"] = v
    assert keys["unbalanced_fit_top_neuron"] == max(seps, key=seps.get)
    close(keys["unbalanced_fit_top_neuron_sep"], max(seps.values()), rel=1e-6)
    names = ["dla_diff_by_failure", "attention_from_0"]
    if keys["top_neuron_read"].startswith("direct"):
        names.append("neurons_vs_open_proportion")
    assert_charts(charts, names)


@pytest.mark.slow  # a seed script end to end (90-150 s at load 12); test_seed003_addition runs by default
@needs_zoo("lm")
def test_seed001_days(tmp_path: Path) -> None:
    stdout, keys, store, charts = run_example("seed001_days.py", tmp_path, 300)
    assert store.complete and store.n_examples == 300 and store.manifest.task == "days"
    o = store.outputs
    close(keys["accuracy"], o.get_column("correct").mean())
    close(keys["mean_logit_diff"], o.get_column("logit_diff").mean(), rel=1e-4)
    target = logit_minus_bias(store, diff=True).mean()
    close(keys["dla_sum_mean"], target, rel=1e-2, abs_=1e-2)
    close(keys["logit_lens_final_mean"], target, rel=1e-2, abs_=1e-2)
    means = {k: v.mean() for k, v in all_heads(store, diff=True).items()}
    ranked = sorted(means, key=means.get, reverse=True)
    assert keys["top_head_1"] == ranked[0]
    close(keys["top_head_1_dla"], means[ranked[0]], rel=1e-2, abs_=1e-3)
    layer, head = (int(x) for x in re.fullmatch(r"L(\d+)H(\d+)", ranked[0]).groups())
    close(keys["top_head_end_to_today"], role_attention(store, layer, head, "end_pos", "subject_pos").mean(), rel=5e-3)
    comps = {k: v.mean() for k, v in (all_heads(store, diff=True) | mlp_dla(store, diff=True)).items()}
    assert keys["top_component"] == max(comps, key=comps.get)
    close(keys["top_component_dla"], max(comps.values()), rel=1e-2, abs_=1e-3)
    assert "Logit lens" in stdout
    # activation patching (denoise) recomputed with TransformerLens hooks on the first SWEEP_N examples
    t = Twins(store, SWEEP_N)
    first = o.filter(pl.col("example_id") < SWEEP_N)
    close(keys["patch_clean_logit_diff"], first.get_column("logit_diff").mean(), rel=1e-3)
    close(keys["patch_corrupted_logit_diff"], t.metric(t.corrupted, "logit_diff").mean(), rel=1e-3, abs_=1e-3)
    cc = t.cache(t.clean)
    n_layers, n_heads = int(store.config["n_layers"]), int(store.config["n_heads"])
    z = {}
    for layer in range(n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        for h in range(n_heads):
            z[f"L{layer}H{h}"] = denoise_score(t, [(name, put(cc[name], (slice(None), slice(None), h)))])
    best = max(z, key=z.get)
    assert keys["patch_z_top_head"] == best
    close(keys["patch_z_top_score"], z[best], rel=1e-3, abs_=1e-3)
    end = t.ex.get_column("end_pos").to_numpy()
    mlp = {}
    for layer in range(n_layers):
        name = f"blocks.{layer}.hook_mlp_out"
        mlp[f"L{layer} END"] = denoise_score(t, [(name, put(cc[name], (np.arange(SWEEP_N), end)))])
    best = max(mlp, key=mlp.get)
    assert keys["patch_mlp_out_top"] == best
    close(keys["patch_mlp_out_top_score"], mlp[best], rel=1e-3, abs_=1e-3)
    assert_charts(charts, ["dla_heads", "logit_lens", "attention_end", "patch_resid_pre", "patch_z_heads"])


@pytest.mark.slow  # a seed script end to end (90-150 s at load 12); test_seed003_addition runs by default
@needs_zoo("lm")
def test_seed004_ioi(tmp_path: Path) -> None:
    stdout, keys, store, charts = run_example("seed004_ioi.py", tmp_path, 300)
    assert store.complete and store.n_examples == 300 and store.manifest.task == "ioi"
    o = store.outputs.sort("example_id").join(store.examples.select("example_id", "order"), on="example_id")
    close(keys["accuracy"], o.get_column("correct").mean())
    close(keys["mean_logit_diff"], o.get_column("logit_diff").mean(), rel=1e-4)
    for order, part in o.group_by("order"):
        close(keys[f"mean_logit_diff_{order[0]}"], part.get_column("logit_diff").mean(), rel=1e-4)
    close(keys["dla_sum_mean"], logit_minus_bias(store, diff=True).mean(), rel=1e-2, abs_=1e-2)
    heads = all_heads(store, diff=True)
    means = {k: v.mean() for k, v in heads.items()}
    ranked = sorted(means, key=means.get, reverse=True)
    assert [keys[f"top_head_{i}"] for i in (1, 2, 3)] == ranked[:3]
    assert keys["most_negative_head"] == ranked[-1]
    comps = {k: v.mean() for k, v in (heads | mlp_dla(store, diff=True)).items()}
    assert keys["top_component"] == max(comps, key=comps.get)
    close(keys["top_component_dla"], max(comps.values()), rel=1e-2, abs_=1e-3)
    for name in ranked[:3]:
        layer, head = (int(x) for x in re.fullmatch(r"L(\d+)H(\d+)", name).groups())
        close(keys[f"end_to_io_{name}"], role_attention(store, layer, head, "end_pos", "io_pos").mean(), rel=5e-3)
        close(keys[f"end_to_s1_{name}"], role_attention(store, layer, head, "end_pos", "s1_pos").mean(), rel=5e-3)
    # the SQL answer: the (head, order) with the largest mean DLA
    order = o.get_column("order").to_numpy()
    cells = {(k, g): v[order == g].mean() for k, v in heads.items() for g in np.unique(order)}
    (comp, grp), best = max(cells.items(), key=lambda kv: kv[1])
    assert (keys["sql_top_component"], keys["sql_top_order"]) == (comp, grp)
    close(keys["sql_top_mean_dla"], best, rel=1e-2, abs_=1e-3)
    assert "SELECT" in stdout
    # the top head's normalised score of z patching at END (from the Polars frame) from the SQL view
    where = "kind = 'patch' AND hook = 'z' AND role = 'END' AND metric = 'logit_diff'"
    res = store.sql(f"SELECT layer, head, avg((value - corrupted) / (clean - corrupted)) AS score FROM interventions "
                    f"WHERE {where} AND clean <> corrupted GROUP BY layer, head ORDER BY score DESC").pl()
    assert keys["patch_z_end_top_head"] == f"L{res['layer'][0]}H{res['head'][0]}"
    close(keys["patch_z_end_top_score"], res["score"][0], rel=1e-5, abs_=1e-6)
    # the SQL query's answer from the Polars frame of the same rows
    from actstore.query.interventions import interventions, normalised

    rows = normalised(interventions(store)).filter((pl.col("kind") == "patch") & (pl.col("hook") == "z")
                                                   & (pl.col("role") == "END"))
    cells = (rows.join(store.examples.select("example_id", "order"), on="example_id")
             .group_by("layer", "head", "order").agg(pl.col("score").mean()).sort("score", descending=True))
    top = cells.row(0, named=True)
    assert (keys["sql_patch_top_head"], keys["sql_patch_top_order"]) == (f"L{top['layer']}H{top['head']}",
                                                                         top["order"])
    close(keys["sql_patch_top_score"], top["score"], rel=1e-5, abs_=1e-6)
    # AtP vs exact: Spearman of the per-head means (ranks from the SQL view)
    means = store.sql("SELECT kind, layer, head, avg(value) AS v FROM interventions WHERE hook = 'z' AND role = 'END' "
                      "AND kind IN ('patch', 'atp') GROUP BY ALL").pl()
    wide = means.pivot(on="kind", index=["layer", "head"], values="v")
    ranks = wide.select(pl.col("atp").rank(), pl.col("patch").rank())
    close(keys["atp_spearman"], ranks.select(pl.corr("atp", "patch")).item(), rel=1e-4)
    # TransformerLens hooks: the top head's z at END patched into the twin, and path patching to the logits
    t = Twins(store, SWEEP_N)
    close(keys["patch_clean_logit_diff"], o.filter(pl.col("example_id") < SWEEP_N).get_column("logit_diff").mean(),
          rel=1e-3)
    close(keys["patch_corrupted_logit_diff"], t.metric(t.corrupted, "logit_diff").mean(), rel=1e-3, abs_=1e-3)
    cc, cx = t.cache(t.clean), t.cache(t.corrupted)
    end = t.ex.get_column("end_pos").to_numpy()
    layer, head = head_of(keys["patch_z_end_top_head"])
    name = f"blocks.{layer}.attn.hook_z"
    close(keys["patch_z_end_top_score"], denoise_score(t, [(name, put(cc[name], (np.arange(SWEEP_N), end, head)))]),
          rel=1e-3, abs_=1e-3)
    n_layers, n_heads = int(store.config["n_layers"]), int(store.config["n_heads"])
    clean = t.metric(t.clean, "logit_diff")

    def frozen(at: int, sender: tuple[int, int]) -> Any:
        """Every head's z from the clean run, the sender's from the twin."""
        def hook(x: Any, hook: Any) -> Any:
            x[:] = cc[f"blocks.{at}.attn.hook_z"]
            if at == sender[0]:
                x[:, :, sender[1]] = cx[f"blocks.{at}.attn.hook_z"][:, :, sender[1]]
            return x
        return hook

    path = {}
    for sl in range(n_layers):
        for sh in range(n_heads):
            hooks = [(f"blocks.{at}.attn.hook_z", frozen(at, (sl, sh))) for at in range(sl, n_layers)]
            path[f"L{sl}H{sh}"] = float((t.metric(t.clean, "logit_diff", hooks) - clean).mean())
    worst = min(path, key=path.get)
    assert keys["path_top_head"] == worst
    close(keys["path_top_effect"], path[worst], rel=1e-3, abs_=1e-3)
    assert_charts(charts, ["dla_heads", "attention_end", "dla_by_order", "path_patching", "atp_vs_exact"])

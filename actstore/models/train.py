"""Training a zoo model from scratch on generated task data (`actstore train NAME`).

Deterministic: the model is initialised from `seed`, batch k is generated with data seed
zoo.TRAIN_SEED_BASE + k (so never from an evaluation seed), AdamW with linear warmup then
cosine decay, gradients clipped, a fixed number of torch threads. The same settings give the
same weights on the same machine and torch version.

Losses (zoo.TrainSettings.loss):
- answers / classifier: cross-entropy of the logits at the answer positions (the seeds' loss;
  for the brackets classifier that is the 2-class head at position 0, pad keys masked).
- lm: the prompt followed by its answer token as one sequence; next-token cross-entropy on
  every real token, plus `answer_weight` x the cross-entropy of the answer token.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from actstore.datasets import get_task
from actstore.datasets.base import check_n_seed, is_int
from actstore.errors import InvalidParameterError
from actstore.models.backend import build_model, raw_config
from actstore.models.evaluate import check_target
from actstore.models.forward import Batch, as_batch, concat_batches, gather_answers, masked_logits
from actstore.models.zoo import (EVAL_SEED, FORMAT_VERSION, TRAIN_SEED_BASE, ZOO_DIR, ZooSpec, model_config,
                                 tokenizer_fingerprint, tokenizer_for, weight_paths, zoo_spec)
from actstore.outputs import atomic_output, is_utf8, write_error

EVAL_N = 4000  # fresh examples per target when training finishes


@dataclass
class TrainResult:
    """What a training run produced: file paths, the JSON record, and whether targets were met."""

    weights: Path
    record_path: Path
    record: dict[str, Any]
    installed: bool

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.record["eval"])


def lr_factor(step: int, steps: int, warmup: int, min_frac: float) -> float:
    """Learning-rate multiplier: linear warmup to 1, then cosine down to `min_frac`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_batch(spec: ZooSpec, tasks: list[Any], step: int, batch: int, tokenizer: Any) -> Batch:
    """Training batch `step`: each task's share of `batch` examples, data seed TRAIN_SEED_BASE + step."""
    seed = TRAIN_SEED_BASE + step
    if len(tasks) == 1:
        return as_batch(tasks[0].generate(batch, seed, tokenizer=tokenizer))
    mix = spec.train.mix
    sizes = [int(round(batch * f)) for f in mix[:-1]]
    sizes.append(batch - sum(sizes))
    parts = [task.generate(size, seed, tokenizer=tokenizer) for task, size in zip(tasks, sizes) if size > 0]
    return concat_batches(parts, pad_id=parts[0].pad_id)


def batch_loss(model: Any, b: Batch, loss: str, answer_weight: float = 1.0) -> torch.Tensor:
    """The training loss of one batch (see the module docstring)."""
    if loss in ("answers", "classifier"):
        logits = masked_logits(model, b.tokens, b.lengths)  # [example, pos, vocab_out]
        answers = gather_answers(logits, b.answer_pos)  # [example, answer, vocab_out]
        return F.cross_entropy(answers.flatten(0, 1), b.answer_tokens.flatten())
    if loss == "lm":
        n, width = b.tokens.shape
        rows = torch.arange(n)
        seq = torch.cat([b.tokens, b.tokens[:, :1]], dim=1)  # [example, pos + 1]: room for the answer
        end = b.answer_pos[:, 0] + 1  # the answer token goes right after the answer position
        seq[rows, end] = b.answer_tokens[:, 0]
        lengths = torch.maximum(b.lengths, end + 1)
        logits = masked_logits(model, seq, lengths)  # [example, pos + 1, vocab]
        real = torch.arange(width, device=seq.device)[None, :] < (lengths - 1)[:, None]  # predicts a real token
        token_loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), seq[:, 1:].flatten(), reduction="none")
        lm = (token_loss.view(n, width) * real).sum() / real.sum()
        answer = F.cross_entropy(logits[rows, b.answer_pos[:, 0]], b.answer_tokens[:, 0])
        return lm + answer_weight * answer
    raise InvalidParameterError(f"unknown training loss {loss!r} (answers, classifier, lm)")


def train(name: str, steps: int | None = None, seed: int | None = None, out: str | Path | None = None,
          install: bool = False, progress: bool = True, eval_n: int = EVAL_N, threads: int | None = None,
          overwrite: bool = False) -> TrainResult:
    """Train zoo model `name`, write NAME.safetensors + NAME.json to `out`, evaluate on fresh data.

    out:     output directory (default `zoo-runs/NAME-seedS-stepsN`); existing weights there are not
             replaced unless `overwrite`.
    install: also copy the files over the shipped zoo weights, only if every target is met.
    Every argument is checked before training starts; a run that fails leaves no files behind.
    """
    spec = zoo_spec(name)
    settings = replace(spec.train, steps=spec.train.steps if steps is None else steps,
                       seed=spec.train.seed if seed is None else seed)
    used_threads = settings.threads if threads is None else threads
    check_run(settings, eval_n, used_threads)
    out = train_dir(name, settings, out, install)
    weights, record_path = weight_paths(name, out)
    if (weights.exists() or record_path.exists()) and not overwrite:
        raise InvalidParameterError(f"{weights} already exists; choose another -o directory or remove it")
    kept = [p for p in (weights, record_path) if p.exists()]  # with overwrite: not ours to remove
    made = _make_dirs(out)
    try:
        result = _train_into(spec, settings, out, weights, record_path, progress, eval_n, used_threads)
    except BaseException:
        _remove_run([p for p in (weights, record_path) if p not in kept], made)
        raise
    if install and result.ok:
        ZOO_DIR.mkdir(exist_ok=True)
        for path in (weights, record_path):
            if path.parent.resolve() != ZOO_DIR.resolve():
                with atomic_output(ZOO_DIR / path.name, "the zoo file") as f:
                    f.write(path.read_bytes())
        result.installed = True
    return result


def check_run(settings: Any, eval_n: Any, threads: Any) -> None:
    """InvalidParameterError naming the flag unless steps, seed, eval_n and threads are usable."""
    if not is_int(settings.steps) or settings.steps < 1:
        raise InvalidParameterError(f"--steps must be a positive integer, got {settings.steps}")
    if not is_int(settings.seed) or not 0 <= settings.seed < 2**32:
        raise InvalidParameterError(f"--seed must be an integer in 0..{2**32 - 1}, got {settings.seed}")
    try:
        check_n_seed(eval_n, EVAL_SEED)
    except InvalidParameterError as e:
        raise InvalidParameterError(f"--eval-n: {e}") from None
    cpus = os.cpu_count() or 1
    if not is_int(threads) or not 1 <= threads <= cpus:
        raise InvalidParameterError(f"--threads must be an integer in 1..{cpus} (this machine's CPUs), got {threads}")


def train_dir(name: str, settings: Any, out: str | Path | None, install: bool) -> Path:
    """The directory a run writes into, checked: not empty, not a file, not the shipped zoo without `install`."""
    if out is None:
        return Path("zoo-runs") / f"{name}-seed{settings.seed}-steps{settings.steps}"
    if not os.fspath(out):
        raise InvalidParameterError("-o is empty; give the directory to write the weights into")
    if not is_utf8(out):
        raise InvalidParameterError(f"-o {os.fspath(out)!r} is not valid UTF-8 (safetensors cannot read the weights "
                                    "back); choose another directory name")
    path = Path(out)
    try:
        is_file = path.exists() and not path.is_dir()
    except OSError as e:
        raise write_error(path, "-o", e) from None
    if is_file:
        raise InvalidParameterError(f"-o {os.fspath(out)!r} is a file; give a directory to write "
                                    f"{name}.safetensors and {name}.json into")
    if path.resolve() == ZOO_DIR.resolve() and not install:
        raise InvalidParameterError(f"{out} is the shipped zoo; use --install to replace the shipped weights")
    return path


def _train_into(spec: ZooSpec, settings: Any, out: Path, weights: Path, record_path: Path, progress: bool,
                eval_n: int, threads: int) -> TrainResult:
    """Fit, write the weights and record atomically, evaluate as users load the model."""
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, losses, wall = _fit(spec, settings, progress)
    finally:
        torch.set_num_threads(saved_threads)
    record = _record(spec, settings, model, losses, wall)
    record["training"]["threads"] = threads
    from safetensors.torch import save

    with atomic_output(weights, "-o") as f:
        f.write(save({k: v.detach().contiguous() for k, v in model.state_dict().items()}))
    _write_json(record_path, record)

    from actstore.models.load import load_model

    processed = load_model(out)  # evaluate the model as users load it (processed weights)
    params = dict(spec.tasks)
    record["eval"] = [check_target(processed, t, params.get(t.task), n=eval_n, seed=EVAL_SEED) for t in spec.targets]
    _write_json(record_path, record)
    return TrainResult(weights, record_path, record, installed=False)


def _write_json(path: Path, record: dict[str, Any]) -> None:
    with atomic_output(path, "-o") as f:
        f.write((json.dumps(record, indent=1) + "\n").encode())


def _make_dirs(out: Path) -> list[Path]:
    """Create `out` and missing parents; returns the directories created (deepest first)."""
    missing = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(out, "-o", e) from None
    return missing


def _remove_run(files: list[Path], made: list[Path]) -> None:
    """Undo a failed run: the files it wrote, then the directories it created if they are empty."""
    for path in files:
        path.unlink(missing_ok=True)
    for d in made:
        with contextlib.suppress(OSError):
            d.rmdir()


def _fit(spec: ZooSpec, settings: Any, progress: bool) -> tuple[Any, list[float], float]:
    """Train from scratch; returns (model, per-step losses, wall seconds)."""
    from tqdm.auto import tqdm

    tokenizer = tokenizer_for(spec)
    config = model_config(spec, tokenizer) | {"seed": settings.seed}
    torch.manual_seed(settings.seed)
    model = build_model(config, tokenizer=tokenizer)
    model.train()
    tasks = [get_task(task, **params) for task, params in spec.tasks]
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                            betas=settings.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, settings.steps, settings.warmup, settings.min_lr_frac)
    )
    losses: list[float] = []
    bar = tqdm(range(settings.steps), desc=f"train {spec.name}", disable=not progress, mininterval=0.5)
    start = time.perf_counter()
    for step in bar:
        b = make_batch(spec, tasks, step, settings.batch, tokenizer)
        loss = batch_loss(model, b, settings.loss, settings.answer_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 25 == 0 or step == settings.steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
    wall = time.perf_counter() - start
    model.eval()
    return model, losses, wall


def _record(spec: ZooSpec, settings: Any, model: Any, losses: list[float], wall: float) -> dict[str, Any]:
    """The JSON record saved beside the weights."""
    import transformer_lens

    tail = losses[-min(50, len(losses)):]
    every = max(1, len(losses) // 20)
    record: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": spec.name,
        "spec": f"zoo:{spec.name}",
        "description": spec.description,
        "config": raw_config(model),
        "tasks": [{"task": t, "params": p} for t, p in spec.tasks],
        "training": asdict(settings) | {
            "data_seeds": f"{TRAIN_SEED_BASE} + step",
            "eval_seeds": f"< {TRAIN_SEED_BASE} (recorded accuracy: seed {EVAL_SEED})",
            "wall_seconds": round(wall, 1),
            "final_loss": sum(tail) / len(tail),
            "loss_curve": {str(i): losses[i] for i in range(0, len(losses), every)},
            "torch": torch.__version__,
            "transformer_lens": getattr(transformer_lens, "__version__", "unknown"),
        },
        "notes": dict(spec.notes),
        "tokenizer": None,
    }
    if model.tokenizer is not None and spec.tokenizer is not None:
        record["tokenizer"] = tokenizer_fingerprint(tokenizer_for(spec))
    return record

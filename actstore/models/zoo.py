"""The model zoo: what each zoo model is, how it is trained, and its shipped weight files.

A zoo model is a TransformerLens config, the task(s) it is trained on, the training settings
that reproduce it (`actstore train NAME`) and the accuracy it must reach on fresh examples.
Its weights ship as `zoo/<name>.safetensors` (the raw trained state dict, unprocessed) next
to `zoo/<name>.json` (config, tasks, training settings, measured accuracy, tokenizer check).

Training and evaluation seeds are disjoint: training batch k is generated with data seed
`TRAIN_SEED_BASE + k`; every evaluation seed is below TRAIN_SEED_BASE.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from actstore.errors import InvalidParameterError, ModelUnavailableError, UnknownModelError

ZOO_DIR = Path(__file__).parent / "zoo"
TRAIN_SEED_BASE = 10_000  # training data seeds are >= this; evaluation seeds are < this
EVAL_SEED = 1  # the default fresh-data seed of `actstore eval` and the recorded accuracy
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TrainSettings:
    """How a zoo model is trained (AdamW, linear warmup then cosine decay to lr * min_lr_frac).

    loss: 'answers' (cross-entropy at the answer positions), 'classifier' (the same, for a
          class head read at position 0) or 'lm' (next-token loss on every real token of the
          prompt followed by its answer, plus `answer_weight` x the answer's cross-entropy).
    mix:  for several tasks, the fraction of each batch drawn from each task (in spec order).
    """

    steps: int
    loss: str = "answers"
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.98)
    warmup: int = 100
    min_lr_frac: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    answer_weight: float = 1.0
    mix: tuple[float, ...] = (1.0,)
    threads: int = 1


@dataclass(frozen=True)
class Target:
    """An accuracy target on fresh data: overall and, optionally, within each value of a label."""

    task: str
    accuracy: float
    by: str | None = None
    by_accuracy: float | None = None
    logit_diff: float | None = None  # minimum mean logit difference, where the task has one


@dataclass(frozen=True)
class ZooSpec:
    """One zoo model: config fields, tasks as (name, params), training settings, targets."""

    name: str
    description: str
    config: dict[str, Any]
    tasks: tuple[tuple[str, dict[str, Any]], ...]
    train: TrainSettings
    targets: tuple[Target, ...]
    tokenizer: str | None = None  # 'word' for actstore.datasets.wordtok
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def bidirectional(self) -> bool:
        return self.config.get("attention_dir") == "bidirectional"


ZOO: dict[str, ZooSpec] = {
    "list_update": ZooSpec(
        name="list_update",
        description="seed 000: 2 layers, 1 head, attention-only, no LayerNorm, shortformer, d_model 128",
        config=dict(
            n_layers=2, n_heads=1, d_model=128, d_head=128, n_ctx=11, d_vocab=52, d_vocab_out=50,
            attn_only=True, normalization_type=None, positional_embedding_type="shortformer",
            model_name="zoo:list_update", seed=0,
        ),  # fmt: skip
        tasks=(("list_update", {"list_len": 3, "max_num": 50}),),
        train=TrainSettings(steps=1500, lr=1e-3, warmup=50),
        targets=(Target("list_update", 0.99),),
    ),
    "addition": ZooSpec(
        name="addition",
        description="seed 003: 2 layers, 3 heads, d_model 48, d_head 24, LayerNorm, attention-only",
        config=dict(
            n_layers=2, n_heads=3, d_model=48, d_head=24, n_ctx=14, d_vocab=12, d_vocab_out=10,
            attn_only=True, normalization_type="LN", positional_embedding_type="standard",
            model_name="zoo:addition", seed=0,
        ),  # fmt: skip
        tasks=(("addition", {"digits": 4, "max_operand": 5000}),),
        train=TrainSettings(steps=14000, lr=3e-3, warmup=200),
        targets=(Target("addition", 0.99),),
    ),
    "brackets": ZooSpec(
        name="brackets",
        description="seed 002: 3 layers, 2 heads, d_model 56, d_mlp 56, LayerNorm, bidirectional, "
        "2-class head at position 0",
        config=dict(
            n_layers=3, n_heads=2, d_model=56, d_head=28, d_mlp=56, n_ctx=42, d_vocab=5, d_vocab_out=2,
            attn_only=False, normalization_type="LN", positional_embedding_type="standard", act_fn="relu",
            attention_dir="bidirectional", model_name="zoo:brackets", seed=0,
        ),  # fmt: skip
        tasks=(("brackets", {"max_len": 40, "balanced_fraction": 0.5}),),
        train=TrainSettings(steps=4000, loss="classifier", lr=1e-3, warmup=100),
        targets=(Target("brackets", 0.97, by="failure", by_accuracy=0.90),),
        notes={"padding": "run with pad keys masked in every layer (attention_mask from TaskData.lengths); "
               "TransformerLens 3.9 applies attention_mask only to causal attention, so actstore masks "
               "hook_attn_scores (see actstore.models.forward)"},
    ),
    "lm": ZooSpec(
        name="lm",
        description="seeds 001/004 offline: GPT-2-style (LayerNorm, gelu MLPs, learned positions), "
        "word-level tokenizer, trained on IOI and days prompts",
        config=dict(
            n_layers=3, n_heads=4, d_model=128, d_head=32, d_mlp=512, n_ctx=32, d_vocab=0,
            attn_only=False, normalization_type="LN", positional_embedding_type="standard", act_fn="gelu_new",
            model_name="zoo:lm", seed=0, default_prepend_bos=True,
        ),  # fmt: skip
        tasks=(("ioi", {"order": "both", "corrupt": "none"}), ("days", {"kind": "both", "corrupt": "none"})),
        train=TrainSettings(steps=3000, loss="lm", batch=128, lr=3e-3, warmup=100, answer_weight=8.0,
                            mix=(0.85, 0.15)),
        targets=(Target("ioi", 0.95, logit_diff=2.0), Target("days", 0.90)),
        tokenizer="word",
    ),
}


def zoo_names() -> list[str]:
    """Names of the zoo models (`zoo:NAME` specs)."""
    return sorted(ZOO)


def zoo_spec(name: str) -> ZooSpec:
    """The spec of zoo model `name` (UnknownModelError naming the zoo otherwise)."""
    if name not in ZOO:
        raise UnknownModelError(f"no zoo model zoo:{name}; zoo models: {', '.join('zoo:' + n for n in zoo_names())}")
    return ZOO[name]


def weight_paths(name: str, directory: Path | None = None) -> tuple[Path, Path]:
    """(safetensors, json) paths of zoo model `name` in `directory` (default: the shipped zoo)."""
    base = Path(directory) if directory is not None else ZOO_DIR
    return base / f"{name}.safetensors", base / f"{name}.json"


def tokenizer_for(spec: ZooSpec) -> Any:
    """The Hugging Face tokenizer of a zoo model, or None for models on their tasks' own token ids."""
    if spec.tokenizer is None:
        return None
    if spec.tokenizer == "word":
        from actstore.datasets.wordtok import word_tokenizer

        return word_tokenizer()
    raise InvalidParameterError(f"zoo model {spec.name}: unknown tokenizer kind {spec.tokenizer!r}")


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """Vocabulary size and a sha256 of the id-ordered vocabulary (to check a rebuilt tokenizer)."""
    vocab = tokenizer.get_vocab()
    ordered = "\n".join(w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1]))
    return {"vocab_size": len(vocab), "sha256": hashlib.sha256(ordered.encode()).hexdigest()}


def model_config(spec: ZooSpec, tokenizer: Any = None) -> dict[str, Any]:
    """Config fields of a zoo model (d_vocab filled in from the tokenizer where it has one)."""
    config = dict(spec.config)
    if tokenizer is not None:
        config["d_vocab"] = config["d_vocab_out"] = len(tokenizer.get_vocab())
    return config


def read_record(name: str, directory: Path | None = None) -> dict[str, Any]:
    """The JSON record of zoo model `name` (ModelUnavailableError if its weights are not there)."""
    weights, meta = weight_paths(name, directory)
    if not weights.exists() or not meta.exists():
        raise ModelUnavailableError(
            f"zoo:{name}: no trained weights at {weights} (+ .json); build them with "
            f"`actstore train {name} --install`"
        )
    record = json.loads(meta.read_text())
    if record.get("format_version") != FORMAT_VERSION:
        raise ModelUnavailableError(
            f"zoo:{name}: {meta} has format_version {record.get('format_version')!r}, this actstore reads "
            f"{FORMAT_VERSION}; retrain with `actstore train {name} --install`"
        )
    return record


def settings_dict(spec: ZooSpec) -> dict[str, Any]:
    """Training settings as JSON."""
    return asdict(spec.train)

"""What a sweep runs: a frozen, validated spec whose canonical JSON names the sweep.

Vocabulary:
- kind:  patch (exact activation patching), path_patch, ablate, atp (attribution patching)
- hook:  resid_pre, resid_mid, resid_post, attn_out, mlp_out (layer-level); z, q, k, v, pattern (per head)
- grain: 'layer' / 'layer,pos' for layer-level hooks, 'head' / 'head,pos' for head hooks
- pos:   which positions 'pos' grains sweep: None (every position) or indices and role names
- mode:  denoise (corrupted run, clean activation patched in) or noise (clean run, corrupted patched in)
- method (ablate): zero, mean or resample; mean_over: all, pos, role or label:COLUMN
- metrics: read on the patched run at the clean example's answer positions, with its answer and
  counter tokens: logit_diff (answer minus counter logit), correct_logit, logprob, loss

Only this module knows the spelling of a request; configs do no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from actstore.errors import InvalidParameterError

FORMAT = 1
KINDS = ("patch", "path_patch", "ablate", "atp")
LAYER_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_HOOKS = ("z", "q", "k", "v", "pattern")
HOOKS = LAYER_HOOKS + HEAD_HOOKS
GRAINS = {"layer": LAYER_HOOKS, "layer,pos": LAYER_HOOKS, "head": HEAD_HOOKS, "head,pos": HEAD_HOOKS}
MODES = ("denoise", "noise")
METHODS = ("zero", "mean", "resample")
MEAN_OVER = ("all", "pos", "role")
METRICS = ("logit_diff", "correct_logit", "logprob", "loss")
RECEIVER_INPUTS = ("q", "k", "v")
DEFAULT_BATCH = 16  # examples per forward pass
DEFAULT_ROWS = 512  # rows per patched forward pass (examples x patched variants)
DEFAULT_PART = 256  # examples per stored part (commit unit)


@dataclass(frozen=True)
class SweepSpec:
    """One sweep over examples [start, stop) of a store; see the module docstring for the fields.

    receivers (path_patch): ('logits',) or heads as 'LAYER.HEAD'; receiver_input: q, k or v.
    batch / rows / part: examples per forward pass, rows per patched pass, examples per stored
    part. They are part of the spec because float results can depend on batch shapes: the same
    spec always computes the same batches, so a resumed sweep writes the same bytes.
    """

    kind: str
    hook: str
    grain: str
    start: int
    stop: int
    pos: tuple[str, ...] | None = None
    mode: str = "denoise"
    method: str | None = None
    mean_over: str | None = None
    metrics: tuple[str, ...] = METRICS
    receivers: tuple[str, ...] | None = None
    receiver_input: str | None = None
    seed: int = 0
    batch: int = DEFAULT_BATCH
    rows: int = DEFAULT_ROWS
    part: int = DEFAULT_PART
    format: int = field(default=FORMAT)

    def validate(self) -> "SweepSpec":
        def bad(msg: str) -> InvalidParameterError:
            return InvalidParameterError(msg)

        if self.kind not in KINDS:
            raise bad(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.hook not in HOOKS:
            raise bad(f"unknown hook {self.hook!r}; interventions take {', '.join(HOOKS)}")
        if self.grain not in GRAINS:
            raise bad(f"grain must be one of {', '.join(GRAINS)}, got {self.grain!r}")
        if self.hook not in GRAINS[self.grain]:
            want = "layer or layer,pos" if self.hook in LAYER_HOOKS else "head or head,pos"
            raise bad(f"hook {self.hook} is swept by {want}, not --grain {self.grain}")
        if self.pos is not None and not self.grain.endswith(",pos"):
            raise bad(f"--pos picks positions of a ',pos' grain; use --grain {self.grain},pos or drop --pos")
        if self.pos is not None and not self.pos:
            raise bad("--pos is empty; give indices or roles, e.g. --pos S2,END")
        if self.mode not in MODES:
            raise bad(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        metrics = self.metrics
        if not metrics or any(m not in METRICS for m in metrics) or len(set(metrics)) < len(metrics):
            raise bad(f"metrics must be distinct names from {', '.join(METRICS)}, got {', '.join(metrics) or '(none)'}")
        if self.kind == "ablate":
            if self.method not in METHODS:
                raise bad(f"ablation method must be one of {', '.join(METHODS)}, got {self.method!r}")
            if self.method == "mean":
                over = self.mean_over or ""
                if over not in MEAN_OVER and not (over.startswith("label:") and len(over) > 6):
                    raise bad(f"--mean-over must be all, pos, role or label:COLUMN, got {self.mean_over!r}")
            elif self.mean_over is not None:
                raise bad(f"--mean-over applies to --method mean only, not {self.method}")
        elif self.method is not None or self.mean_over is not None:
            raise bad(f"--method/--mean-over apply to ablations, not to {self.kind}")
        if self.kind == "path_patch":
            if self.hook != "z" or self.grain != "head":
                raise bad("path patching sweeps sender heads: hook z, grain head")
            if not self.receivers:
                raise bad("path patching needs receivers: 'logits' or heads as LAYER.HEAD, e.g. 3.0,3.1")
            if self.receivers != ("logits",) and self.receiver_input not in RECEIVER_INPUTS:
                raise bad(f"receiver input must be one of {', '.join(RECEIVER_INPUTS)}, got {self.receiver_input!r}")
        elif self.receivers is not None or self.receiver_input is not None:
            raise bad(f"receivers apply to path patching, not to {self.kind}")
        for name, v, low in (("start", self.start, 0), ("stop", self.stop, self.start + 1), ("batch", self.batch, 1),
                             ("rows", self.rows, 1), ("part", self.part, 1), ("seed", self.seed, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise bad(f"{name} must be an integer >= {low}, got {v!r}")
        if self.format != FORMAT:
            raise bad(f"sweep spec format {self.format} is not {FORMAT}")
        return self

    @property
    def n_parts(self) -> int:
        return -(-(self.stop - self.start) // self.part)

    def ranges(self) -> list[tuple[int, int]]:
        """Example range [start, stop) of each stored part."""
        return [(a, min(a + self.part, self.stop)) for a in range(self.start, self.stop, self.part)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pos"] = None if self.pos is None else list(self.pos)
        d["metrics"] = list(self.metrics)
        d["receivers"] = None if self.receivers is None else list(self.receivers)
        d["n_parts"] = self.n_parts
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepSpec":
        d = {k: v for k, v in d.items() if k != "n_parts"}
        try:
            for key in ("pos", "receivers", "metrics"):
                if d.get(key) is not None:
                    d[key] = tuple(str(x) for x in d[key])
            return cls(**d).validate()
        except TypeError as e:
            raise InvalidParameterError(f"not a sweep spec: {e}") from None

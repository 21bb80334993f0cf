"""Names and one-line descriptions of the chart kinds (no Altair import: the CLI help reads this)."""

from __future__ import annotations

KIND_HELP: dict[str, str] = {
    "dla-heads": "layer x head heatmap of mean direct logit attribution",
    "dla-components": "bars of mean DLA per component with 95% CIs",
    "dla-split": "component DLA split by a label (--group-by; addition: carry per digit)",
    "attention": "average attention pattern per head, token roles on the axes",
    "attention-roles": "attention from one query role (--query-role) to each key role, per head",
    "logit-lens": "answer logit through the residual stream, per answer or label",
    "neurons": "neuron output onto a direction vs a numeric label (--x, --color)",
    "ov-circuit": "OV circuit of one head over the task's tokens (--layer, --head)",
    "qk-circuit": "QK circuit of one head over the task's tokens (--layer, --head)",
    "accuracy": "accuracy by label value",
    "pca": "pc1 vs pc2 of a layer's residual (or z) at --pos, coloured by a label (--layer, --color)",
    "sweep": "a stored intervention sweep (--sweep ID; the only one by default): heatmap or effect bars",
    "weights": "heatmap of a weight matrix spec (default W_U; --layer/--head: W_E@OV:L.H@W_U; matrix= in Python)",
    "weight-svd": "bars of the singular values of a weight matrix spec (as weights; --top keeps the largest)",
    "weight-fourier": "W_U (or a spec's token or position axis) in the Fourier basis, over the task's digits",
}

"""Interventions as data: activation patching, path patching, ablations and attribution patching,
run with the store's model and written into the store as tables (see actstore.store.sweeps).

Only this package (with `ingest` and `models`) imports torch and TransformerLens.
"""

from actstore.errors import require_models

require_models("actstore.interventions")  # a reader-only install: one error naming the extra

from actstore.interventions.api import ablate, attribution_patch, patch, path_patch  # noqa: E402
from actstore.interventions.spec import SweepSpec  # noqa: E402

__all__ = ["SweepSpec", "ablate", "attribution_patch", "patch", "path_patch"]

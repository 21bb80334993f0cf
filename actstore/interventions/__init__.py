"""Interventions as data: activation patching, path patching, ablations and attribution patching,
run with the store's model and written into the store as tables (see actstore.store.sweeps).

Only this package (with `ingest` and `models`) imports torch and TransformerLens.
"""

from actstore.interventions.api import ablate, attribution_patch, patch, path_patch
from actstore.interventions.spec import SweepSpec

__all__ = ["SweepSpec", "ablate", "attribution_patch", "patch", "path_patch"]

"""Peak memory of a query measured in a fresh process: `run_script(SCRIPT, args...)` runs SCRIPT after
`json`, `sys` and a `hwm()` (the process's peak resident set, VmHWM, in MB) and returns the JSON its
last output line holds."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

PRELUDE = r"""
import json, sys

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""


def run_script(script: str, *args: object, timeout: float = 600) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", PRELUDE + script, *map(str, args)], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])

#!/usr/bin/env bash
# The run behind docs/benchmarks.md's tables: one benchmark after another on a quiet machine, each preceded and
# followed by the time and load average, into one log; then `benchmarks/tables.py LOG` prints the page's tables.
#
#   bash benchmarks/quiet_run.sh [LOG] [STORES_DIR]     (about 30 minutes on the 2-core CPU; stores reused in DIR)
#
# ACTSTORE_QUIET_PARTS limits it to some of: ingest, reads, fallback, query, sae, setup, lm (default: all, in that
# order; fallback reads the stores reads keeps in DIR).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-quiet_run.log}
DIR=${2:-/tmp/actstore-bench-stores}
PARTS=${ACTSTORE_QUIET_PARTS:-ingest,reads,fallback,query,sae,setup,lm}
P=${PY:-.venv/bin/python}
stamp() { echo "=== $1 $(date -u +%Y-%m-%dT%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"; }
run() {  # a part: its command's output (warnings dropped) between two stamps
    stamp "start: $*" >> "$LOG"
    "$@" 2>&1 | grep -v -e "Warning" -e "warnings.warn" >> "$LOG"
    stamp "done" >> "$LOG"
}
want() { [[ ",$PARTS," == *",$1,"* ]]; }
echo "=== HEAD $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)') $(nproc) cores" >> "$LOG"
want ingest && run "$P" benchmarks/ingest.py --models gpt2,zoo:addition,zoo:list_update,zoo:brackets --n 128 \
    --zoo-n 8192 --repeats 2 --peers notebook,floor,sae
want reads && run "$P" benchmarks/reads.py --models gpt2,zoo --n 256 --repeats 15 --dir "$DIR"
want fallback && run "$P" benchmarks/fallback.py --dir "$DIR" --repeats 15
want query && run "$P" benchmarks/query.py --models gpt2,zoo --n 64 --n-zoo 4096 --repeats 3 --read-repeats 15
want sae && run "$P" benchmarks/ingest.py --models gpt2 --n 128 --peers sae --repeats 8 --sae-only
want setup && run "$P" benchmarks/ingest_setup.py --models gpt2,zoo:addition --n 32 --repeats 4 --processes 3
want setup && run "$P" benchmarks/ingest_setup.py --models gpt2 --n 32 --repeats 4 --processes 3 \
    --hooks blocks.6.hook_resid_pre --no-outputs
want lm && run "$P" benchmarks/ingest.py --models zoo:lm --zoo-n 8192 --repeats 2 --peers floor,sae
echo "log: $LOG (tables: $P benchmarks/tables.py $LOG)"

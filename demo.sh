#!/usr/bin/env bash
# Set everything up and run the main job on the built-in default: the zoo addition model
# (seed 003) over 4096 addition problems -> a store, its per-head DLA split by carry, a report.
#   ./demo.sh [STORE_DIR]          (default stores/addition; rerunning resumes / reuses it)
set -euo pipefail
cd "$(dirname "$0")"
STORE=${1:-stores/addition}
./setup.sh
A=.venv/bin/actstore
$A ingest --task addition --model zoo:addition --n 4096 --seed 0 --out "$STORE"
$A verify "$STORE"
echo "== mean per-head DLA toward the correct digit, tens digit (answer_idx 2), carry vs no carry"
$A sql "$STORE" "SELECT carry_2 AS carry, component, round(avg(value), 2) AS mean_dla, count(*) AS n
                 FROM dla JOIN examples USING (example_id)
                 WHERE answer_idx = 2 AND head IS NOT NULL
                 GROUP BY ALL ORDER BY carry, component" --format table
$A report "$STORE" -o "$STORE.report.html"
echo "report: $STORE.report.html (open it in a browser; it needs no network)"

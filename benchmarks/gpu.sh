#!/usr/bin/env bash
# One-shot CUDA benchmark run on a lent GPU machine (no network): unpack the packed site folder that
# benchmarks/gpu_wheels.sh built into .whl/, put it and the repo on PYTHONPATH, check that torch sees
# CUDA, then run benchmarks/ingest.py (--device cuda) and benchmarks/query.py, each under `timeout`,
# with every line of output in $OUT/gpu_results.txt. Sized to finish in about 8 minutes.
#
#   bash benchmarks/gpu.sh            # on the lent machine, from the repo root (the `run` call in
#                                     # docs/benchmarks.md, "CUDA")
#   GPU_CHECK=1 PY=... SITE_TAR=.whl/site-cp311.tar.xz OUT=/tmp/out bash benchmarks/gpu.sh
#                                     # here, to check the mechanism: CPU, tiny sizes, no CUDA needed
#
# query.py --device cuda: ingest and the TransformerLens baseline (warm, and cold in a fresh process) run
# on CUDA; the store's DLA runs on the CPU, as it does on any reader.
set -euo pipefail
py=${PY:-python3}
tar_file=${SITE_TAR:-.whl/site-cp312.tar.xz}
out=${OUT:-/tmp/actstore-gpu-out}
site=${SITE_DIR:-/tmp/actstore-site}
check=${GPU_CHECK:-0}
mkdir -p "$out"
log="$out/gpu_results.txt"
exec > >(tee "$log") 2>&1

if [[ ! -f $tar_file ]]; then
  echo "missing $tar_file: run 'bash benchmarks/gpu_wheels.sh .whl 3.12' here and carry .whl" >&2
  exit 2
fi
echo "# actstore CUDA benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
rm -rf "$site" && mkdir -p "$site"
xz -dc "$tar_file" | tar -C "$site" -xf -
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [[ $check == 1 ]]; then
  device=cpu; ingest_args=(--n 8 --zoo-n 256 --zoo-chunk 128 --repeats 1)
  query_args=(--n 8 --n-zoo 256 --repeats 1); t_ingest=300; t_query=300
else
  nvidia-smi || true
  device=cuda; ingest_args=(--n 256 --zoo-n 16384 --repeats 2)
  query_args=(--n 64 --n-zoo 4096 --repeats 3); t_ingest=270; t_query=180
fi
# head DLA's C kernel (setup.py): built in place where this machine has a compiler and Python's headers,
# else the store's DLA runs head_dot.py's numpy code (the same values, slower); the line below says which
"$py" setup.py -q build_ext --inplace >/dev/null 2>&1 || echo "# no C compiler here: head_dot's numpy code"
"$py" - "$device" <<'EOF'
import sys
from importlib.metadata import version
import duckdb, numcodecs, polars, torch, transformer_lens, zarr  # noqa: F401
import actstore
from actstore.query import dla  # noqa: F401
names = ("zarr", "numcodecs", "polars", "duckdb", "transformer_lens", "transformers", "numpy", "pyarrow")
print(f"# python {sys.version.split()[0]} torch {torch.__version__} cuda {torch.version.cuda} "
      f"available={torch.cuda.is_available()} " + " ".join(f"{n} {version(n)}" for n in names)
      + f" actstore from {actstore.__file__}")
from actstore.query import head_dot
print(f"# head DLA's C kernel: {'built' if head_dot.KERNEL is not None else 'absent (numpy code)'}")
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("torch sees no CUDA device")
    print(f"# {torch.cuda.get_device_name(0)}")
EOF
status=0
echo "## ingest: --device $device --models gpt2,zoo:addition --peers notebook,floor ${ingest_args[*]} (timeout ${t_ingest}s)"
timeout "$t_ingest" "$py" benchmarks/ingest.py --device "$device" --models gpt2,zoo:addition \
  --peers notebook,floor "${ingest_args[@]}" || { status=$?; echo "## ingest exited $status"; }
echo "## query: --device $device --models gpt2,zoo:addition ${query_args[*]} (timeout ${t_query}s; store DLA on the CPU)"
timeout "$t_query" "$py" benchmarks/query.py --device "$device" --models gpt2,zoo:addition "${query_args[@]}" \
  || { status=$?; echo "## query exited $status"; }
echo "## done, status $status"
exit "$status"

#!/usr/bin/env bash
# Download the wheels the lent GPU machine lacks, for benchmarks/gpu.sh to install there with no network.
#
# The machine (see the device README) already holds CUDA torch, numpy, pyarrow, pandas, fsspec, einops,
# jaxtyping, transformers, tokenizers, safetensors, accelerate, huggingface-hub, tqdm, rich, sentencepiece,
# protobuf, pyyaml, xxhash, xarray and tensorstore. It lacks actstore's store/query side (zarr and its
# donfig + google-crc32c, numcodecs, polars + polars-runtime-32, duckdb) and transformer_lens with the
# dependencies it imports that the machine lacks (beartype, better-abc, datasets + dill + multiprocess,
# fancy-einsum, typeguard, transformers-stream-generator). wandb (TransformerLens imports it only to
# train), dask, altair and vl-convert (charts, clusters) are not needed by the benchmarks and stay behind.
# Versions are the ones this project's .venv runs. The set must stay within the 64 MiB the device call
# carries; the script prints the total and fails above it.
#
#   bash benchmarks/gpu_wheels.sh [DEST=.whl] [PYTHON_VERSION=3.12]
#
# 3.12 is the machine's Python. Pass 3.11 to build the set that the local simulation installs (see
# docs/benchmarks.md, "CUDA").
set -euo pipefail
dest=${1:-.whl}
pyver=${2:-3.12}
py=${PYTHON:-python3}
pkgs=(
  zarr==3.1.6 donfig==0.8.1.post1 google-crc32c==1.9.0 numcodecs==0.16.6
  polars==2.1.0 polars-runtime-32==2.1.0 duckdb==2.0.1
  transformer_lens==3.9.0 beartype==0.23.1 better-abc==0.0.3 fancy-einsum==0.0.3 typeguard==4.6.1
  transformers-stream-generator==0.0.5 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
)
mkdir -p "$dest"
plat=()
for p in manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 \
         manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 linux_x86_64; do
  plat+=(--platform "$p")
done
# transformers-stream-generator ships only an sdist: build its (pure-Python) wheel here
pure=()
for spec in "${pkgs[@]}"; do
  if [[ $spec == transformers-stream-generator* ]]; then pure+=("$spec"); continue; fi
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${plat[@]}" -d "$dest" "$spec"
done
for spec in "${pure[@]}"; do
  "$py" -m pip wheel -q --no-deps -w "$dest" "$spec"
done
total=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
ls -l "$dest"/*.whl | awk '{printf "%8.1f MiB  %s\n", $5 / 1048576, $9}'
echo "total $(awk -v t="$total" 'BEGIN {printf "%.1f", t / 1048576}') MiB in $(ls "$dest"/*.whl | wc -l) wheels"
if (( total > 60 * 1048576 )); then
  echo "over 60 MiB: the device call carries 64 MiB including the working tree" >&2
  exit 1
fi

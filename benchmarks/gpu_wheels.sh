#!/usr/bin/env bash
# Build the packages the lent GPU machine lacks into one stripped, xz-packed site folder,
# .whl/site-cpXY.tar.xz, for benchmarks/gpu.sh to unpack there with no network and put on PYTHONPATH.
#
# The machine (see the device README) already holds CUDA torch, numpy, pyarrow, pandas, fsspec, einops,
# jaxtyping, transformers, tokenizers, safetensors, accelerate, huggingface-hub, tqdm, rich, sentencepiece,
# protobuf, pyyaml, xxhash, xarray and tensorstore. It lacks actstore's store/query side (zarr and its
# donfig + google-crc32c, numcodecs, polars + polars-runtime-32, duckdb: actstore.query imports sql,
# which imports duckdb) and transformer_lens with the dependencies it imports that the machine lacks
# (beartype, better-abc, datasets + dill + multiprocess, fancy-einsum, typeguard,
# transformers-stream-generator). wandb (TransformerLens imports it only to train), dask, altair and
# vl-convert (charts, clusters) are not needed by the benchmarks and stay behind.
# Versions are the ones this project's .venv runs.
#
# As wheels the set is ~89 MiB, over the 64 MiB a device call carries (polars-runtime-32 51 MiB,
# duckdb 24 MiB), so the wheels are installed (--no-deps, for the target Python and platform) into a
# folder, their shared objects stripped of symbols, bytecode and tests dropped, and the folder packed
# with xz -9. The script prints the size and fails above 60 MiB (the working tree travels too).
#
#   bash benchmarks/gpu_wheels.sh [DEST=.whl] [PYTHON_VERSION=3.12]
#
# 3.12 is the machine's Python. Pass 3.11 to build the same set for the local Python, to check the
# mechanism here (docs/benchmarks.md, "CUDA").
set -euo pipefail
dest=${1:-.whl}
pyver=${2:-3.12}
py=${PYTHON:-python3}
tag=cp${pyver/./}
pkgs=(
  zarr==3.1.6 donfig==0.8.1.post1 google-crc32c==1.9.0 numcodecs==0.16.6
  polars==2.1.0 polars-runtime-32==2.1.0 duckdb==2.0.1
  transformer_lens==3.9.0 beartype==0.23.1 better-abc==0.0.3 fancy-einsum==0.0.3 typeguard==4.6.1
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
)
plat=()
for p in manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 \
         manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 linux_x86_64; do
  plat+=(--platform "$p")
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$dest" "$work/wheels" "$work/site"
# transformers-stream-generator ships only an sdist: build its (pure-Python) wheel here
"$py" -m pip wheel -q --no-deps -w "$work/wheels" transformers-stream-generator==0.0.5
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  "${plat[@]}" -d "$work/wheels" "${pkgs[@]}"
"$py" -m pip install -q --no-deps --no-compile --no-index --only-binary=:all: --python-version "$pyver" \
  --implementation cp "${plat[@]}" --target "$work/site" "$work/wheels"/*.whl
wheels=$(du -cb "$work/wheels"/*.whl | tail -1 | cut -f1)
find "$work/site" -name '*.so*' -type f -exec strip --strip-unneeded {} +
find "$work/site" -depth -type d \( -name __pycache__ -o -name tests \) -exec rm -rf {} +
rm -rf "$work/site/bin"
out="$dest/site-$tag.tar.xz"
tar -C "$work/site" -cf - . | xz -9 -T0 >"$out.tmp"
mv "$out.tmp" "$out"
size=$(stat -c %s "$out")
mib() { awk -v t="$1" 'BEGIN {printf "%.1f", t / 1048576}'; }
echo "$(find "$work/wheels" -name "*.whl" | wc -l) wheels, $(mib "$wheels") MiB -> $out $(mib "$size") MiB" \
     "(unpacked $(mib "$(du -sb "$work/site" | cut -f1)") MiB)"
if (( size > 60 * 1048576 )); then
  echo "over 60 MiB: the device call carries 64 MiB including the working tree" >&2
  exit 1
fi

#!/usr/bin/env bash
# GPU benchmark in one command: builds 20,000 JPEGs from the shared photos, indexes them with ViT-B-32
# and ViT-L-14 (random weights) at batch 256 and 512 with GPU JPEG decoding on and off, reports images/s,
# GPU utilisation (pynvml) and the decode/encode split, and times FAISS-GPU exact search over 1M and 10M
# vectors; under 8 minutes in all. Writes its section of docs/benchmarks.md (scripts/bench_gpu.py).
#
#   scripts/bench_gpu.sh              # on a machine with a CUDA GPU (H100/H200)
#   scripts/bench_gpu.sh --dry-run    # the same steps on the CPU, tiny model, small counts (CI)
#
# Needs: the repository's venv (.venv, or PYTHON=...) with clipsearch[index] and a CUDA build of torch;
# optional: nvidia-ml-py (GPU utilisation), faiss-gpu-cu12 (the search step; said so when absent);
# ../shared/data/imagenet-samples. Extra arguments go to scripts/bench_gpu.py (--help).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --signal=INT 540 "$PYTHON" scripts/bench_gpu.py "$@"

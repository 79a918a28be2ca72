#!/usr/bin/env bash
# Fetch, here (a machine that reaches PyPI), the wheels that benchmarks/gpu.sh installs on a GPU machine that
# reaches no package index. Run from the repository root:
#     bash benchmarks/gpu_wheels.sh
# It fills .whl/ (git-ignored, about 8 MB) with pure-Python wheels for Python 3.12 on x86-64 Linux, pinned to
# the versions this project is tested with. The GPU image brings torch (CUDA), transformers, numpy, scipy,
# pandas, matplotlib, safetensors, torchmetrics, huggingface_hub and pytorch-lightning; what it lacks is
# jsonargparse (LightningCLI) and its signature helpers, diffusers and its importlib_metadata, and lightning
# itself is pinned (2.6.2 and 2.6.3 were compromised releases). Then send .whl with the working tree, e.g. with
# the device tool: run(command="bash benchmarks/gpu.sh", carry=[".whl"]).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 diffusers==0.42.1 \
  importlib_metadata==10.2.0 lazy-importer lightning==2.6.6
ls -la .whl

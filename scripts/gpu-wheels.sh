#!/usr/bin/env bash
# Download, here, the wheels the lent GPU machine lacks (its image has Python 3.12 with CUDA torch,
# numpy, scipy, scikit-image, matplotlib, pytest, click, pyyaml, tifffile, imageio and more, but not
# our storage and cluster stack), into .whl/ (git-ignored), for scripts/gpu-check.sh. Needs PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
# versions as in this repo's tested environment (scripts/install.sh resolves the same names)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl \
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 \
  dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 tblib==3.2.2 zict==3.0.0 \
  tornado==6.6.1 perlin-numpy==0.0.1 mrcfile==1.5.4 pynrrd==1.1.3 deprecated==1.3.1
du -sh .whl
ls .whl

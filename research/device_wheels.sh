#!/usr/bin/env bash
# The wheels the GPU device machine lacks (its image has torch, transformers, huggingface_hub, safetensors,
# numpy, scipy, pillow, pyyaml; see /work/.library/device/KINDS.md), for Python 3.12, into .whl/ (git-ignored
# through .git/info/exclude). Versions are the ones this checkout's .venv runs, so both machines run the same
# library code. Each device call carries `.whl` and starts with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PACKAGES=(diffusers peft webdataset braceexpand pydantic pydantic_core annotated-types typing-inspection typing_extensions)
pins=()
for name in "${PACKAGES[@]}"; do
  version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))")
  pins+=("$name==$version")
done
rm -rf .whl && mkdir .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${pins[@]}"
ls .whl

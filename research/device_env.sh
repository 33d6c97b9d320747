# Sourced by the device_*.sh scripts from the repository root: the project's wheels (research/device_wheels.sh)
# beside the device machine's own PyTorch, the environment every run needs, $out, and the GPU in the log.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out=${OUT:?set OUT}
nvidia-smi -L

#!/usr/bin/env bash
# Issue 21, one device call: does the detail stage's discriminator learn? The shipped GPU teacher, one
# semantic expert, then detail stages side by side on the one GPU, each through the product's stage code
# with its discriminator health logged every 25 steps (d_hinge_real/fake, d_accuracy, gan_grad_share).
#   OUT=... bash research/device_gan_health.sh SEMANTIC_STEPS DETAIL_STEPS "name:override,override" ...
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out=${OUT:?set OUT}; semantic=$1; detail=$2; shift 2
nvidia-smi -L
common=(-S profile=gpu -S data.shapes.train_samples=2048 -S data.shapes.val_samples=256 -S distill.baselines=[]
        -S distill.sample_prompts=64 -S distill.semantic.steps=$semantic -S distill.detail.steps=$detail
        -S distill.detail.log_every=25)
python3 research/run_stages.py --out /tmp/base-out --work /tmp/base --workers 8 --teacher-parts weights/toy-teacher-gpu \
  --stages shard,precompute,semantic "${common[@]}" > "$out/base.log" 2>&1 || { tail -n 20 "$out/base.log"; exit 1; }
for run in "$@"; do
  name=${run%%:*}; settings=()
  IFS=, read -ra pairs <<< "${run#*:}"
  for pair in "${pairs[@]}"; do [ -n "$pair" ] && settings+=(-S "$pair"); done
  mkdir -p "/tmp/$name/students" && cp -r /tmp/base/students/semantic "/tmp/$name/students/"
  python3 research/run_stages.py --out "/tmp/$name-out" --work "/tmp/$name" --stages detail "${common[@]}" \
    -S shard.dir=/tmp/base/shards -S teacher.out_dir=/tmp/base/teacher -S precompute.dir=/tmp/base/latents \
    "${settings[@]}" > "$out/$name.log" 2>&1 &
done
wait
for run in "$@"; do name=${run%%:*}; echo "== $name"; grep -E "^detail |Error" "$out/$name.log" | cut -c1-600; done

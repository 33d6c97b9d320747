#!/usr/bin/env bash
# Issue 22, one device call: the shipped GPU teacher (weights/toy-teacher-gpu, 16×32×32) distilled with budgets
# small enough for the CPU default (fp32, batch 4), each run through the product's stage code and evaluated
# on 64 held-out prompts at 4 and 8 steps; all runs side by side on the one GPU.
#   OUT=... bash research/device_default_budget.sh "name:semantic_steps:detail_steps:batch" ...
set -uo pipefail
cd "$(dirname "$0")/.."
source research/device_env.sh
for budget in "$@"; do
  IFS=: read -r name semantic detail batch <<< "$budget"
  python3 research/run_stages.py --out "$out/$name" --work "/tmp/$name" --workers 4 --teacher-parts weights/toy-teacher-gpu \
    --stages shard,precompute,semantic,detail,evaluate -S profile=gpu -S data.shapes.train_samples=2048 \
    -S data.shapes.val_samples=256 -S distill.baselines=[] -S evaluate.prompts=64 -S evaluate.student_steps=[4,8] \
    -S evaluate.latency_repeats=1 -S evaluate.batch_size=64 -S evaluate.vbench.dimensions=[] \
    -S distill.semantic.steps=$semantic -S distill.detail.steps=$detail \
    -S distill.semantic.batch_size=$batch -S distill.detail.batch_size=$batch \
    -S distill.semantic.precision=fp32 -S distill.detail.precision=fp32 > "$out/$name.log" 2>&1 &
done
wait
for budget in "$@"; do
  name=${budget%%:*}
  echo "== $name"; grep -A12 "^| model" "$out/$name/eval_report.md" 2>/dev/null || tail -n 5 "$out/$name.log"
done

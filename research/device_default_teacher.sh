#!/usr/bin/env bash
# Issue 22 on one GPU machine, one device call: can a teacher at the CPU default's geometry draw the
# prompted objects, and how far does a CPU-sized distillation budget get a student of a good teacher?
#   A: the gpu profile's teacher architecture trained at the default geometry (8×32×32) within a time limit;
#   B: the shipped 16-frame gpu teacher (weights/toy-teacher-gpu) distilled with the CPU default's budgets
#      (fp32, batch 8), two budgets, evaluated on 64 held-out prompts at 4 steps.
#   OUT=... bash research/device_default_teacher.sh <teacher_seconds> [-S key=value ... for A]
set -uo pipefail
limit=${1:?teacher time limit in seconds}; shift
cd "$(dirname "$0")/.."
source research/device_env.sh
cpu=(-S data.shapes.train_samples=2048 -S data.shapes.val_samples=256 -S distill.baselines=[]
     -S evaluate.prompts=64 -S evaluate.student_steps=[4] -S evaluate.latency_repeats=1 -S evaluate.batch_size=64)
for stage in semantic detail; do cpu+=(-S distill.$stage.precision=fp32 -S distill.$stage.batch_size=8); done
student() {  # name semantic_steps detail_steps
  python3 research/run_stages.py --out "$out/$1" --work "/tmp/$1" --workers 4 --teacher-parts weights/toy-teacher-gpu \
    --stages shard,precompute,semantic,detail,evaluate -S profile=gpu "${cpu[@]}" \
    -S distill.semantic.steps=$2 -S distill.detail.steps=$3 > "$out/$1.log" 2>&1
}
python3 research/run_stages.py --out "$out/teacher8" --work /tmp/teacher8 --workers 8 --stages shard,teacher \
  -S profile=gpu -S data.frames=8 -S data.shapes.speed=[0.03,0.06] -S teacher.toy.train.steps=20000 \
  -S "teacher.toy.train.time_limit_s=$limit" "$@" > "$out/teacher8.log" 2>&1 &
(student budget60 60 60; student budget150 150 150) &
wait
tail -n 5 "$out"/*.log
grep -h "judge_overall\|^| " "$out"/*/eval_report.md 2>/dev/null | head -40

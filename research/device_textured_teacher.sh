#!/usr/bin/env bash
# Issue 21 on one GPU machine, one device call: the gpu_textured profile's teacher (textured objects), fine-tuned
# from the shipped gpu teacher (teacher.toy.init: finetune), judged on 64 held-out prompts; its tar parts go to
# $OUT/teacher for weights/.
#   OUT=... bash research/device_textured_teacher.sh [-S key=value ...]
set -uo pipefail
cd "$(dirname "$0")/.."
source research/device_env.sh
python3 research/run_stages.py --out "$out/teacher" --work /tmp/textured --workers 14 --stages shard,teacher \
  -S profile=gpu_textured "$@" > "$out/teacher.log" 2>&1
echo "exit $?"
tail -n 25 "$out/teacher.log"

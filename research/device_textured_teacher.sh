#!/usr/bin/env bash
# Issue 21 on a GPU machine: the gpu_textured profile's teacher (textured objects), fine-tuned from the shipped gpu
# teacher (teacher.toy.init: finetune, teacher.toy.train.steps of the profile), data-parallel over every GPU, judged
# on 64 held-out prompts; its int8 parts (about 10 MB, weights/README.md) and record come back in $OUT for
# weights/toy-teacher-textured. Budget-aware: exit 3 means call again (the same machine continues from $WORK); each
# such call also returns teacher_partial/ (the weights so far, int8): when the machine is gone, commit it and
# continue from it on a fresh one with TEACHER_CONTINUE=<that folder>.
#   OUT=... [WORK=/tmp/textured] [TEACHER_CONTINUE=dir] bash research/device_textured_teacher.sh <budget_s> [-S key=value ...]
set -uo pipefail
cd "$(dirname "$0")/.."
budget=${1:?budget in seconds}; shift
WORK=${WORK:-/tmp/textured} TEACHER_ONLY=1 exec bash research/device_claim.sh "$budget" -S profile=gpu_textured "$@"

#!/usr/bin/env bash
# Issue 6 on a GPU machine, one device call at a time: shards, the teacher (data-parallel over every GPU),
# then the claim plan (research/run_matrix.py, research/plans/claim.yaml). Each part checkpoints and stops inside
# the budget, and the same command continues it: on the same machine from $WORK; on a fresh one from what
# $OUT returned (commit it, carry it): TEACHER_PARTS and EARLIER.
#
#   OUT=... [WORK=/tmp/claim] [TEACHER_PARTS=dir] [EARLIER=matrix.json] [PLAN=yaml] [PER_GPU=6] [WORKERS=16] \
#     [TEACHER_ONLY=1] [TEACHER_CONTINUE=a returned teacher_partial folder] [RUNS=dcm,lcm-s0,...: a subset of the plan's runs first; run-sN one seed of a run] \
#     [FINISH_FIRST=1: the session's last call; where not every job can finish, some pause so that the others do] \
#     bash research/device_claim.sh <budget_s> [-S key=value ...]
#
# The device's copy of the tree has no .git: start the command with DCM_SOURCE_COMMIT=<the hash of `git rev-parse
# HEAD` here, written out> so that `dcm import-runs` tags the runs with the commit whose code made them.
#
# Exit 3: stopped by the budget, call again. What comes back in $OUT (at most 8 files, the device's limit):
# the teacher's tar parts, teacher_metrics.json and teacher_samples.png in the call that finished it, and in a call
# the budget stopped teacher_partial/ (its weights so far: commit them, and on a fresh machine TEACHER_CONTINUE=that
# folder continues where they stopped); matrix.json, matrix.log,
# samples.safetensors; final_{report.md,samples.png,metrics.json} once the plan is done.
set -uo pipefail
budget=${1:?budget in seconds}; shift
start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }
cd "$(dirname "$0")/.."
if [ -d .whl ] && [ ! -d /tmp/site ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
work=${WORK:-/tmp/claim}
out=${OUT:?set OUT to the results folder}
gpus=$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))') || exit 1
nvidia-smi -L 2>/dev/null
mkdir -p "$work" "$out"

if [ -z "${TEACHER_PARTS:-}" ] && [ ! -f "$work/teacher/manifest.json" ]; then
  teacher_out=$work/teacher-out
  if [ ! -f "$work/shards/manifest.json" ]; then
    python3 research/run_stages.py --out "$teacher_out" --work "$work" --workers "${WORKERS:-16}" --stages shard -S profile=gpu "$@" || exit 1
  fi
  limit=$(( $(left) - 90 ))  # export, judge on 64 prompts and tar the teacher inside the budget
  [ "$limit" -gt 60 ] || { echo "teacher: only $limit s left this call; call again"; exit 3; }
  echo "teacher: $gpus process(es), time limit $limit s"
  mkdir -p "$teacher_out"
  python3 -m torch.distributed.run --standalone --nproc_per_node "$gpus" research/run_stages.py --out "$teacher_out" --work "$work" \
    --stages teacher --resumable ${TEACHER_CONTINUE:+--continue-teacher "$TEACHER_CONTINUE"} -S profile=gpu \
    -S "teacher.toy.train.time_limit_s=$limit" "$@"
  # torchrun reports a rank's exit 3 as a failure: run_stages leaves teacher_stopped.txt when it was the budget
  if [ ! -f "$work/teacher/manifest.json" ]; then
    [ -f "$teacher_out/teacher_stopped.txt" ] || exit 1
    rm -rf "$out/teacher_partial" && cp -r "$teacher_out/teacher_partial" "$out/"  # if the machine goes, these continue
    exit 3
  fi
  rm -rf "$out/teacher_partial"
  cp "$teacher_out"/teacher_model.tar.part* "$teacher_out"/teacher_{metrics.json,samples.png} "$out/"
fi
[ -z "${TEACHER_ONLY:-}" ] || exit 0  # e.g. a one-GPU machine trains the teacher, a several-GPU one the plan

matrix_s=$(( $(left) - 20 ))
# too little left for the plan's prepare step and a useful stretch of training
[ "$matrix_s" -gt 180 ] || { echo "plan: only $matrix_s s left this call; call again"; exit 3; }
# `timeout`: a step that hangs outside the plan's budget (its set-up, say) still ends this call with its log back
timeout $(( matrix_s + 15 )) python3 research/run_matrix.py --work "$work" --out "$out" --workers "${WORKERS:-16}" --per-gpu "${PER_GPU:-6}" \
  --budget-s "$matrix_s" ${PLAN:+--plan "$PLAN"} ${RUNS:+--runs "$RUNS"} ${TEACHER_PARTS:+--teacher-parts "$TEACHER_PARTS"} \
  ${EARLIER:+--earlier "$EARLIER"} ${FINISH_FIRST:+--finish-first} -S profile=gpu "$@"
rc=$?
[ "$rc" -ne 124 ] || { echo "plan: stopped by timeout; call again"; exit 3; }  # it stops its jobs and writes matrix.json
exit "$rc"

"""Finish a teacher where it stopped: a `teacher_partial/` folder (research/run_stages.py --resumable returned it when
the device budget ran out) judged as the teacher stage judges a trained teacher (teacher.sampling: its held-out
prompts, the reference sampler, CFG), then written as a finished pack — the same parts, a record with its judgement
and where it stopped — that `teacher.toy.init: pretrained` and --teacher-parts install.

    python research/finish_teacher.py --partial DIR --out weights/NAME --shard-dir SHARDS [--grid PNG] \
        [-S profile=gpu_textured ...]

SHARDS: a shard stage's output of the teacher's profile; its held-out clips do not depend on the number of training
clips (dcm/data/shapes.py draws each from its split and index), so a small one made here judges the same prompts:
`python research/run_stages.py --out OUT --work WORK --stages shard -S profile=... -S data.shapes.train_samples=64`.
Use it when the judgement clears the bar the teacher is wanted for; otherwise continue it (--continue-teacher).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from dcm.config import load_config
from dcm.eval.report import write_grid
from dcm.models.packed import PART_PREFIX, RECORD, read_record
from dcm.models.toy import ToyFamily
from dcm.stages.teacher import score_teacher, unpack_matching

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partial", required=True, help="a teacher_partial folder (int8 parts + record)")
    parser.add_argument("--out", required=True, help="the finished pack's folder (e.g. weights/toy-teacher-textured)")
    parser.add_argument("--shard-dir", required=True)
    parser.add_argument("--grid", help="a PNG of real vs teacher clips for the judged prompts")
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    partial, out = Path(args.partial), Path(args.out)
    record = read_record(partial)
    if "partial" not in record:
        raise SystemExit(f"{partial}: its record has no 'partial': already a finished teacher")
    cfg = load_config(REPO / "params.yaml", [*args.overrides, f"shard.dir={args.shard_dir}",
                                             f"teacher.toy.pretrained={partial}"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        unpack_matching(cfg, folder)  # its hash and architecture checked, as the teacher stage checks them
        start = time.perf_counter()
        scored = score_teacher(ToyFamily.load(folder, cfg.teacher.max_text_tokens, device, torch.float32), cfg)
        judge_s = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    for part in sorted(partial.glob(f"{PART_PREFIX}*")):
        shutil.copy2(part, out / part.name)
    finished = {key: value for key, value in record.items() if key != "partial"}
    finished |= {"metrics": scored["metrics"], "eval_prompts": len(scored["prompts"]),
                 "sampling": cfg.teacher.sampling.model_dump(),
                 "stopped": {**record["partial"], "judged_on": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                             "judge_s": round(judge_s), "finished_by": "research/finish_teacher.py",
                             "finish_overrides": args.overrides}}
    (out / RECORD).write_text(json.dumps(finished, indent=2, default=str))
    if args.grid:
        write_grid({"real": scored["real"], "teacher": scored["clips"]}, min(12, len(scored["prompts"])), Path(args.grid))
    print(json.dumps({"steps": record["partial"], "eval_prompts": len(scored["prompts"]), "judge_s": round(judge_s),
                      **{k: round(v, 4) for k, v in scored["metrics"].items()}}))


if __name__ == "__main__":
    main()

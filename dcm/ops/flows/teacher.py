"""Flow `teacher`: pretrain (toy) or validate (real families) the teacher; log curves, samples, scores."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from dcm.config import DEFAULT_PARAMS, config_to_dict, load_config
from dcm.ops.tracking import stage_run
from dcm.stages.teacher import LOSS_CURVE, SAMPLE_GRID, run_teacher_stage
from dcm.ops.flows.common import StepProgress, log_sample_videos, markdown_table

SAMPLE_VIDEOS = 4


@flow(name="teacher", log_prints=True)
def teacher_flow(params: str = str(DEFAULT_PARAMS), overrides: list[str] | None = None) -> dict:
    logger = get_run_logger()
    cfg = load_config(params, overrides)
    logged = {"seed": cfg.seed, "teacher": config_to_dict(cfg.teacher), "schedule": config_to_dict(cfg.schedule)}
    with stage_run(cfg.tracking, "teacher", logged, system_metrics=True) as run:
        training = cfg.teacher.family == "toy" and cfg.teacher.toy.trains
        progress = StepProgress(cfg.teacher.toy.train.steps, "teacher: training steps") if training else None

        def on_log(step: int, metrics: dict) -> None:
            run.log_metrics(metrics, step=step)
            progress.update(step)
            logger.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

        result = run_teacher_stage(cfg, on_log=on_log)
        if progress:
            progress.update(cfg.teacher.toy.train.steps)  # the last step, logged or not
        run.log_metrics(result["metrics"])
        for name in ("manifest.json", LOSS_CURVE, SAMPLE_GRID):
            if (Path(cfg.teacher.out_dir) / name).is_file():
                run.log_artifact(Path(cfg.teacher.out_dir) / name)
        if result["clips"] is not None:
            sampling = cfg.teacher.sampling
            log_sample_videos(run, result["clips"], [p["caption"] for p in result["prompts"]], sampling.fps,
                              sampling.mp4_crf, "samples", SAMPLE_VIDEOS)
        create_markdown_artifact(
            markdown_table(f"Teacher ({cfg.teacher.family})", result["metrics"],
                           f"{cfg.teacher.sampling.steps}-step Euler, CFG {cfg.teacher.sampling.guidance_scale}, "
                           f"{len(result['prompts'])} held-out prompts (judged where they carry shapes ground truth)"),
            key="teacher-report")
    return {"manifest": result["manifest"], "run_id": run.run_id}


if __name__ == "__main__":
    teacher_flow()

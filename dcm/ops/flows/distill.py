"""Flow `distill`: one distillation stage (semantic, detail, or a baseline: lcm, pcm, single) with MLflow
curves and samples."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from dcm.config import DEFAULT_PARAMS, config_to_dict, load_config
from dcm.eval.report import sample_grid
from dcm.ops.tracking import stage_run
from dcm.stages.distill import run_distill_stage, train_config
from dcm.stages.paths import OUTPUT_NAMES
from dcm.ops.flows.common import StepProgress, log_sample_videos, markdown_table

SAMPLE_VIDEOS = 4


@flow(name="distill", log_prints=True)
def distill_flow(method: str, params: str = str(DEFAULT_PARAMS), overrides: list[str] | None = None) -> dict:
    logger = get_run_logger()
    cfg = load_config(params, overrides)
    stage = f"distill_{method}"
    logged = {"seed": cfg.seed, "method": method, "schedule": config_to_dict(cfg.schedule),
              "distill": {k: v for k, v in config_to_dict(cfg.distill).items()
                          if k not in ("semantic", "detail", "baseline")},
              "train": config_to_dict(train_config(cfg, method))}
    fps, crf = cfg.teacher.sampling.fps, cfg.teacher.sampling.mp4_crf
    with stage_run(cfg.tracking, stage, logged, system_metrics=True) as run:
        progress = StepProgress(train_config(cfg, method).steps, f"{stage}: training steps")

        def on_log(step: int, metrics: dict) -> None:
            run.log_metrics(metrics, step=step)
            progress.update(step)
            logger.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

        def on_samples(step: int, clips, prompts) -> None:
            log_sample_videos(run, clips, [p["caption"] for p in prompts], fps, crf, f"samples/step-{step:06d}",
                              SAMPLE_VIDEOS)
            run.log_image(sample_grid({"student": clips}, min(len(clips), SAMPLE_VIDEOS)), "samples", step)

        result = run_distill_stage(cfg, method, on_log=on_log, on_samples=on_samples)
        progress.update(result["steps"])  # the last step, logged or not
        run.log_metrics(result["metrics"])
        log_sample_videos(run, result["clips"], [p["caption"] for p in result["prompts"]], fps, crf, "samples/final",
                          SAMPLE_VIDEOS)
        create_markdown_artifact(
            markdown_table(f"Distillation: {OUTPUT_NAMES[method]}", result["metrics"],
                           f"{result['steps']} steps; judged at {cfg.distill.sample_steps} student steps on "
                           f"{len(result['prompts'])} held-out prompts"), key=f"distill-{method}-report")
    return {"folder": result["folder"], "metrics": result["metrics"], "run_id": run.run_id}


if __name__ == "__main__":
    distill_flow("semantic")

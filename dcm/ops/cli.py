"""`dcm`: one subcommand per pipeline stage, plus `config show`, `status` and `dvc-yaml`.

Stage subcommands run the stage's Prefect flow (the same thing `dvc repro` runs). Expected failures
(bad config, unusable inputs) print one line naming the problem and its fix, and exit non-zero. Each
command imports its flow when it runs, so `dcm config show` does not pay for torch, Prefect and MLflow.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from dcm.config import DEFAULT_PARAMS, ConfigError, config_to_dict, load_config
from dcm.errors import StageError
from dcm.ops.env import PIPELINE_RUN_ENV, PIPELINE_RUN_TAG, apply_runtime_defaults
from dcm.ops.services import check_reachable

EXIT_USAGE, EXIT_FAILED = 2, 1


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default: params.yaml)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. -S data.frames=16 (repeatable)")


def cmd_config_show(args) -> int:
    cfg = load_config(args.params, args.overrides)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    return 0


def cmd_shard(args) -> int:
    from dcm.ops.flows.shard import run
    result = run(args.params, args.overrides)
    splits = result["manifest"]["splits"]
    print(f"shards: {load_config(args.params, args.overrides).shard.dir} "
          f"(train {splits['train']['samples']} clips, val {splits['val']['samples']} clips, "
          f"{len(result['manifest']['skipped'])} inputs skipped); MLflow run {result['run_id']}")
    return 0


def cmd_teacher(args) -> int:
    from dcm.ops.flows.teacher import teacher_flow
    result = teacher_flow(args.params, args.overrides)
    manifest = result["manifest"]
    summary = ", ".join(f"{k}={v:.3f}" for k, v in manifest.get("metrics", {}).items()) or \
        f"the {manifest['family']} teacher in {manifest['path']}, validated"
    print(f"teacher: {load_config(args.params, args.overrides).teacher.out_dir} ({summary}); MLflow run {result['run_id']}")
    return 0


def cmd_precompute(args) -> int:
    from dcm.ops.flows.precompute import precompute_flow
    result = precompute_flow(args.params, args.overrides)
    if result["manifest"] is not None:
        counts = ", ".join(f"{split} {e['samples']} samples ({e['trajectories']} trajectories)"
                           for split, e in result["manifest"]["splits"].items())
        print(f"latents: {load_config(args.params, args.overrides).precompute.dir} ({counts}); "
              f"MLflow run {result['run_id']}")
    return 0


def cmd_distill(args) -> int:
    from dcm.ops.flows.distill import distill_flow
    methods = args.method
    listed = methods == ["baselines"]
    if listed:
        methods = load_config(args.params, args.overrides).distill.baselines
        if not methods:
            print("distill: no baselines selected (distill.baselines is empty)")
    for method in methods:
        result = distill_flow(method, args.params, args.overrides)
        summary = ", ".join(f"{k}={v:.3f}" for k, v in result["metrics"].items())
        print(f"distill {method}: {result['folder']} ({summary}); MLflow run {result['run_id']}")
    if listed:
        from dcm.stages.distill import finish_baselines
        print(f"distill baselines: {finish_baselines(load_config(args.params, args.overrides))}")
    return 0


def cmd_evaluate(args) -> int:
    from dcm.ops.flows.evaluate import evaluate_flow
    result = evaluate_flow(args.params, args.overrides)
    print(f"evaluate: {result['files']['report']}; MLflow run {result['run_id']}")
    print(open(result["files"]["report"]).read(), end="")
    return 0


def cmd_register(args) -> int:
    from dcm.ops.flows.register import register_flow
    record = register_flow(args.params, args.overrides)
    print(f"registered {record['name']} version {record['version']} as challenger ({record['model_uri']})")
    return 0


def cmd_promote(args) -> int:
    from dcm.ops.flows.register import promote_flow
    result = promote_flow(args.params, args.overrides, rollback_to=args.rollback)
    if args.rollback is not None:
        print(f"{result['name']}: champion rolled back to version {args.rollback} (was {result['previous']})")
        return 0
    verdict = "promoted to champion" if result["promoted"] else "not promoted"
    print(f"{result['name']} version {result['challenger']}: {verdict}; champion is version {result['champion']}")
    for reason in result["reasons"]:
        print(f"  {reason}")
    return 0


def cmd_reevaluate(args) -> int:
    from dcm.ops.flows.reevaluate import reevaluate_flow
    result = reevaluate_flow(args.params, args.overrides)  # a regression raises StageError
    print(f"{result['name']} version {result['version']} (champion): no regression")
    for reason in result["reasons"]:
        print(f"  {reason}")
    return 0


def cmd_pipeline(args) -> int:
    from dcm.ops.flows.pipeline import pipeline_flow
    result = pipeline_flow(args.params, promote=not args.no_promote)
    promotion = result["promotion"]
    if promotion is not None:
        verdict = "promoted to champion" if promotion["promoted"] else "not promoted"
        print(f"{promotion['name']} version {promotion['challenger']}: {verdict}; champion is version "
              f"{promotion['champion']}")
        for reason in promotion["reasons"]:
            print(f"  {reason}")
    print(f"pipeline: MLflow parent run {result['run_id']}")
    return 0


def cmd_generate(args) -> int:
    from dcm.stages.generate import run_generate
    cfg = load_config(args.params, args.overrides)
    path = run_generate(cfg, args.model, args.prompt, args.steps, args.seed, args.guidance, Path(args.out))
    print(f"wrote {path}")
    return 0


def cmd_demo(args) -> int:
    from dcm.ops.demo import serve
    cfg = load_config(args.params, args.overrides)
    serve(cfg, cfg.demo.host, cfg.demo.port)
    return 0


def cmd_status(args) -> int:
    from dcm.ops.status import describe
    print(describe(load_config(args.params, args.overrides)))
    return 0


def cmd_import_runs(args) -> int:
    from dcm.ops.import_runs import import_results
    for folder in args.folders:
        for line in import_results(Path(folder), Path(args.params)):
            print(f"{folder}: {line}")
    return 0


def cmd_dvc_yaml(args) -> int:
    from dcm.ops.dvcfile import render, write
    path = Path(args.params).resolve().parent / "dvc.yaml"
    if args.check:
        if not path.is_file() or path.read_text() != render():
            print(f"{path} is out of date with the stage specs and their code: run `dcm dvc-yaml`", file=sys.stderr)
            return EXIT_FAILED
        print(f"{path} is up to date")
        return 0
    print(f"{path} {'written' if write(path) else 'was already up to date'}")
    return 0


def check_prefect_api(args) -> None:
    """With PREFECT_API_URL set, flows report to that server: fail at once if it does not answer."""
    url = os.environ.get("PREFECT_API_URL")
    if url and args.command not in ("config", "dvc-yaml"):
        params = getattr(args, "params", str(DEFAULT_PARAMS))
        timeout = load_config(params, getattr(args, "overrides", None) or []).tracking.probe_timeout_s
        check_reachable(f"{url.rstrip('/')}/health", "the Prefect API (PREFECT_API_URL)",
                        "start it (make server), or unset PREFECT_API_URL to use a temporary local one", timeout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcm", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    config = commands.add_parser("config", help="inspect the resolved configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print params.yaml after overrides and validation")
    _add_config_args(show)
    show.set_defaults(func=cmd_config_show)

    for name, func, text in (
            ("shard", cmd_shard, "write clips (shapes or your videos) into WebDataset shards"),
            ("teacher", cmd_teacher, "pretrain the toy teacher, or validate a real teacher folder"),
            ("precompute", cmd_precompute, "latents, text embeddings and teacher trajectories")):
        stage = commands.add_parser(name, help=text)
        _add_config_args(stage)
        stage.set_defaults(func=func)

    distill = commands.add_parser("distill", help="consistency distillation: DCM's two stages or a baseline")
    distill.add_argument("method", nargs="+", choices=["semantic", "detail", "lcm", "pcm", "single", "baselines"],
                         help="stage(s) to run; 'baselines' runs those listed in distill.baselines")
    _add_config_args(distill)
    distill.set_defaults(func=cmd_distill)

    evaluate = commands.add_parser("evaluate", help="teacher vs DCM vs baselines: judge, fidelity, latency, report")
    _add_config_args(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    register = commands.add_parser("register", help="register the evaluated DCM student as the challenger")
    _add_config_args(register)
    register.set_defaults(func=cmd_register)

    promote = commands.add_parser("promote", help="move the champion alias if the challenger passes the gate")
    promote.add_argument("--rollback", type=int, metavar="VERSION", help="point champion at this version instead")
    _add_config_args(promote)
    promote.set_defaults(func=cmd_promote)

    reevaluate = commands.add_parser("reevaluate", help="evaluate the champion again; fail on a regression")
    _add_config_args(reevaluate)
    reevaluate.set_defaults(func=cmd_reevaluate)

    pipeline = commands.add_parser("pipeline", help="dvc repro, then promotion, under one parent MLflow run")
    pipeline.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file; its folder is the project")
    pipeline.add_argument("--no-promote", action="store_true", help="stop after dvc repro")
    pipeline.set_defaults(func=cmd_pipeline, overrides=[])

    generate = commands.add_parser("generate", help="generate one clip from a prompt and write an mp4")
    generate.add_argument("prompt")
    generate.add_argument("--model", default="dcm",
                          help="dcm (default), semantic, lcm, pcm (distilled students under distill.out_dir), "
                               "teacher, or the path of a DCMPipeline folder")
    generate.add_argument("--steps", type=int,
                          help="steps (default: distill.sample_steps for students, teacher.sampling.steps for the teacher)")
    generate.add_argument("--guidance", type=float, help="teacher only: guidance scale (default: teacher.sampling.guidance_scale)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--out", default="clip.mp4")
    _add_config_args(generate)
    generate.set_defaults(func=cmd_generate)

    dvc_yaml = commands.add_parser("dvc-yaml", help="write dvc.yaml from the stage specs and their code's imports")
    dvc_yaml.add_argument("--check", action="store_true", help="only check that dvc.yaml is up to date")
    dvc_yaml.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file; its folder is the project")
    dvc_yaml.set_defaults(func=cmd_dvc_yaml, overrides=[])

    imports = commands.add_parser("import-runs", help="log results of research/run_stages.py or run_matrix.py (e.g. from a GPU "
                                  "machine without the tracking store) as MLflow runs, one per stage or job")
    imports.add_argument("folders", nargs="+", help="folders research/run_stages.py or research/run_matrix.py wrote (their --out)")
    imports.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default: params.yaml)")
    imports.set_defaults(func=cmd_import_runs, overrides=[])

    demo = commands.add_parser("demo", help="a local page: a registered student beside the teacher (demo.host:demo.port)")
    _add_config_args(demo)
    demo.set_defaults(func=cmd_demo)

    status = commands.add_parser("status", help="where the outputs and MLflow runs of each stage are")
    _add_config_args(status)
    status.set_defaults(func=cmd_status)
    return parser


def run_distributed(args, argv: list[str]) -> bool:
    """Training stages on several processes (dcm/ops/launch.py): start the workers, or, in a worker of rank
    above 0, run the stage without Prefect and MLflow. True when that handled the command."""
    from dcm.ops import launch
    if args.command not in ("teacher", "precompute", "distill", "evaluate"):
        return False
    cfg = load_config(args.params, args.overrides)
    if not launch.distributed_stage(args.command, cfg):
        return False
    if launch.in_worker():
        if launch.join(args.command) == 0:
            return False  # rank 0 runs the stage's flow as a single process would
        launch.run_on_other_ranks(args.command, cfg, launch.methods_of(getattr(args, "method", []), cfg))
        return True
    if launch.process_count(cfg.distributed) == 1:
        return False
    launch.launch(argv, cfg.distributed, args.command)
    return True


def main(argv: list[str] | None = None) -> int:
    apply_runtime_defaults(Path.cwd())
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "params", None):  # flow-run parameters in Prefect's UI then name the project
        args.params = str(Path(args.params).resolve())
    try:
        return _run(args, argv)
    except (ConfigError, FileNotFoundError, StageError) as error:
        if os.environ.get("TORCHELASTIC_ERROR_FILE"):  # a worker: the launcher reports this line
            from dcm.ops.launch import record_failure
            record_failure(error)
        if isinstance(error, ConfigError):
            print(f"dcm: config error: {error}", file=sys.stderr)
            return EXIT_USAGE
        print(f"dcm: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:  # a crash: in a worker, the launcher names it; the traceback follows as usual
        if os.environ.get("TORCHELASTIC_ERROR_FILE"):
            from dcm.ops.launch import record_failure
            record_failure(error)
        raise


def _run(args, argv: list[str]) -> int:
    if run_distributed(args, argv):
        return 0
    check_prefect_api(args)
    if os.environ.get(PIPELINE_RUN_ENV):  # started by the pipeline flow's task for this stage: link the runs
        from prefect import tags
        with tags(PIPELINE_RUN_TAG + os.environ[PIPELINE_RUN_ENV]):
            return args.func(args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

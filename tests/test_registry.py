"""Registry: the champion gate as a pure function, and register → promote → reject → rollback against a
real MLflow registry (SQLite), plus the champion loaded as a pyfunc in a fresh process."""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dcm.config import load_config
from dcm.stages.evaluate import run_evaluate_stage
from dcm.errors import StageError
from dcm.io import read_json
from dcm.ops.registry import reevaluate_champion
from dcm.ops.registry import download_champion, promote, register_challenger, rollback
from dcm.stages.register import CHAMPION, decide, model_name
from dcm.ops.tracking import stage_run
from dcm.stages.distill import run_distill_stage
from tests.conftest import REPO, free_port
from tests.registered import distilled, evaluated, register  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

GATE = load_config(REPO / "params.yaml").registry


def metrics(judge: float, ssim: float = 0.5, oversaturated: float = 0.1, speedup: float = 10.0) -> dict:
    return {"dcm_4.judge_overall": judge, "dcm_4.ssim_vs_teacher": ssim,
            "dcm_4.oversaturated_fraction": oversaturated, "dcm_4.speedup": speedup}


def test_gate_by_hand():
    assert decide(GATE, "shapes", metrics(0.5), None).promote  # the first passing version
    assert not decide(GATE, "shapes", metrics(0.5, speedup=1.5), None).promote  # too slow, even as the first
    assert decide(GATE, "shapes", metrics(0.79), metrics(0.80)).promote  # within the 0.02 tolerance
    rejected = decide(GATE, "shapes", metrics(0.70), metrics(0.80))
    assert not rejected.promote and any("judge_overall: 0.7 fails" in r for r in rejected.reasons)
    assert not decide(GATE, "shapes", metrics(0.9, ssim=0.3), metrics(0.8, ssim=0.5)).promote  # guard: fidelity dropped
    assert not decide(GATE, "shapes", metrics(0.9, oversaturated=0.3), metrics(0.8)).promote  # guard: over-saturation
    assert decide(GATE, "shapes", metrics(0.9, oversaturated=0.12), metrics(0.8)).promote


def test_real_footage_is_gated_on_fidelity_to_the_teacher_with_flicker_and_saturation_guards():
    def footage(ssim: float, flicker: float = 0.95, oversaturated: float = 0.01) -> dict:
        return {"dcm_4.ssim_vs_teacher": ssim, "dcm_4.temporal_flicker": flicker,
                "dcm_4.oversaturated_fraction": oversaturated, "dcm_4.speedup": 10.0}  # no judge: no ground truth

    assert decide(GATE, "videos", footage(0.70), None).promote
    assert decide(GATE, "videos", footage(0.69), footage(0.70)).promote  # within 0.02
    worse = decide(GATE, "videos", footage(0.60), footage(0.70))
    assert not worse.promote and worse.reasons[0] == "gate of data.source videos: primary dcm_4.ssim_vs_teacher"
    assert not decide(GATE, "videos", footage(0.75, flicker=0.90), footage(0.70)).promote  # flickers more
    assert not decide(GATE, "videos", footage(0.75, oversaturated=0.2), footage(0.70)).promote
    assert not decide(GATE, "shapes", footage(0.75), footage(0.70)).promote  # the shapes gate wants a judge score
    custom = load_config(REPO / "params.yaml", ["registry.gates.videos.primary.metric=dcm_4.psnr_vs_teacher"]).registry
    assert "primary dcm_4.psnr_vs_teacher" in decide(custom, "videos", footage(0.7), footage(0.7)).reasons[0]


def test_worse_challenger_keeps_the_champion_better_one_moves_it_and_rollback_works(evaluated):
    import mlflow
    cfg = evaluated
    name = model_name(cfg)
    assert register(cfg, 0.6) == 1 and promote(cfg)["champion"] == 1  # the first version becomes champion
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    assert register(cfg, 0.3) == 2
    worse = promote(cfg)
    assert not worse["promoted"] and worse["champion"] == 1
    assert client.get_model_version(name, "2").tags["dcm.promotion.decision"] == "rejected"
    assert register(cfg, 0.8) == 3
    assert promote(cfg)["promoted"] and int(client.get_model_version_by_alias(name, CHAMPION).version) == 3
    assert client.get_model_version(name, "3").tags["metric.dcm_4.judge_overall"] == "0.8"
    rollback(cfg, 1)
    assert int(client.get_model_version_by_alias(name, CHAMPION).version) == 1
    assert int(client.get_model_version_by_alias(name, "challenger").version) == 3
    # the registered folder carries a model card with the evaluate stage's numbers of this version
    version, folder = download_champion(cfg, Path(cfg.registry.reevaluation_dir) / "card")
    card = (folder / "README.md").read_text()
    assert version == 1 and "## Scores (the evaluate stage" in card and "| dcm_4.judge_overall | 0.6 |" in card


def test_reevaluation_flags_a_champion_that_no_longer_meets_its_record(evaluated):
    import mlflow
    # The tiny 6-step teacher cannot promise the shipped 2x speedup of 4 student steps; the gate's other
    # rules are what this test is about.
    cfg = evaluated.model_copy(update={"registry": evaluated.registry.model_copy(update={"min_speedup": 0.0})})
    with pytest.raises(StageError, match="no 'champion' version"):
        reevaluate_champion(cfg)
    measured = read_json(Path(cfg.evaluate.out_dir) / "metrics.json")
    with stage_run(cfg.tracking, "register", {}):
        register_challenger(cfg, Path(cfg.distill.out_dir) / "dcm", measured, {"git_commit": "test"})
    assert promote(cfg)["promoted"]
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    same = reevaluate_champion(cfg)  # same weights, code and noise: the record holds
    assert not same["regression"] and same["version"] == 1
    assert same["metrics"]["dcm_4"]["judge_overall"] == pytest.approx(measured["dcm_4"]["judge_overall"])
    assert client.get_model_version(model_name(cfg), "1").tags["dcm.reevaluation.result"] == "ok"
    # The record claims more than the model delivers (as after a teacher or library change would look):
    client.set_model_version_tag(model_name(cfg), "1", "metric.dcm_4.judge_overall", "1.5")
    flagged = reevaluate_champion(cfg)
    assert flagged["regression"] and any("judge_overall" in r and "fails" in r for r in flagged["reasons"])
    tags = client.get_model_version(model_name(cfg), "1").tags
    assert tags["dcm.reevaluation.result"] == "regression" and "fails" in tags["dcm.reevaluation.reasons"]


def test_served_model_enforces_the_configured_limits(evaluated):
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException
    limits = {"max_rows": 2, "max_prompt_chars": 40, "max_frames": 8, "max_pixels": 16 * 32, "default_steps": 2}
    cfg = evaluated.model_copy(update={"serving": evaluated.serving.model_copy(update=limits)})
    with stage_run(cfg.tracking, "register", {}):
        record = register_challenger(cfg, Path(cfg.distill.out_dir) / "dcm", {}, {"git_commit": "test"})
    model = mlflow.pyfunc.load_model(record["model_uri"])
    for rows, message in [
        ([{"prompt": "a"}] * 3, "3 clips requested; the limit is 2"),
        ([{"prompt": "a" * 41}], "41 characters; the limit is 40"),
        ([{"prompt": "a", "frames": 12}], "'frames' is 12; the limit is 8"),
        ([{"prompt": "a", "height": 32, "width": 32}], "1024 pixels; the limit is 512"),
        ([{"prompt": "a", "steps": 1}, {"prompt": "b", "steps": 0}], "'steps' must be between 1 and 50"),  # nothing generated
        ([{"prompt": "a", "steps": 30}], "'steps': 30 steps put 15 steps into the segment"),  # 10 Euler nodes
    ]:
        with pytest.raises(MlflowException, match=message):
            model.predict(pd.DataFrame(rows))
    out = model.predict(pd.DataFrame([{"prompt": "a red circle", "height": 16, "width": 32}]))
    assert out.iloc[0]["steps"] == 2 and out.iloc[0]["width"] == 32  # the configured default step count


def test_champion_generates_a_clip_in_a_fresh_process(evaluated, tmp_path):
    cfg = evaluated
    register(cfg, 0.6)
    promote(cfg)
    code = ("import base64, json, mlflow, pandas as pd\n"
            f"model = mlflow.pyfunc.load_model('models:/{model_name(cfg)}@champion')\n"
            "out = model.predict(pd.DataFrame([{'prompt': 'a red circle moving left', 'seed': 3, 'steps': 2}]))\n"
            "print(json.dumps(out.iloc[0].to_dict()))\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": cfg.tracking.uri}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(base64.b64decode(row["video_mp4_base64"]))
    import av
    with av.open(str(clip)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == row["frames"] == 4 and frames[0].shape == (16, 16, 3) and row["steps"] == 2


def post(url: str, payload: dict) -> tuple[int, dict]:
    import urllib.error
    import urllib.request
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_mlflow_models_serve_answers_with_a_video_and_refuses_bad_payloads(evaluated, tmp_path):
    import time
    import urllib.request
    cfg = evaluated
    register(cfg, 0.6)
    promote(cfg)
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # the server execs `uvicorn` from the environment's PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": cfg.tracking.uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                               f"models:/{model_name(cfg)}@champion", "--env-manager", "local", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "mlflow models serve did not come up in 180 s"
            time.sleep(1)
        status, body = post(f"{base}/invocations", {"dataframe_records": [
            {"prompt": "a blue square moving up over white", "seed": 1, "steps": 4}]})
        assert status == 200, body
        clip = tmp_path / "served.mp4"
        clip.write_bytes(base64.b64decode(body["predictions"][0]["video_mp4_base64"]))
        import av
        with av.open(str(clip)) as container:
            assert len([f for f in container.decode(video=0)]) == 4

        status, body = post(f"{base}/invocations", {"dataframe_records": [{"prompt": "a red circle", "steps": 99}]})
        assert 400 <= status < 500 and "'steps' must be between 1 and 50" in json.dumps(body)
        status, body = post(f"{base}/invocations", {"dataframe_records": [{"seed": 1}]})
        assert 400 <= status < 500 and "prompt" in json.dumps(body)
        status, body = post(f"{base}/invocations", {"dataframe_records": [{"prompt": "x", "frames": 4096}]})
        assert 400 <= status < 500 and "the limit is 64" in json.dumps(body)
        status, body = post(f"{base}/invocations", {"dataframe_records": [{"prompt": "a red circle", "steps": 1}]})
        assert status == 200, body  # still serving after the refusals
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)

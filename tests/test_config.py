import subprocess
import sys

import pytest

from dcm.config import ConfigError, flatten, load_config, parse_override
from tests.conftest import REPO

pytestmark = pytest.mark.fast


def write_params(tmp_path, edit):
    text = (REPO / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(edit(text))
    return path


def test_the_shipped_params_file_is_valid():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.data.source == "shapes"
    assert len(cfg.data.shapes.colours) >= 6


def test_unknown_key_is_one_line_naming_its_path(tmp_path):
    path = write_params(tmp_path, lambda t: t.replace("  shapes:\n", "  shapes:\n    colurs: 3\n", 1))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "\n" not in message
    assert "data.shapes.colurs: unknown key" in message


def test_wrong_type_names_the_key(tmp_path):
    path = write_params(tmp_path, lambda t: t.replace("  frames: 16", "  frames: eight", 1))
    with pytest.raises(ConfigError, match=r"data\.frames"):
        load_config(path)


def test_overrides_use_dvc_syntax_and_yaml_values():
    assert parse_override("data.frames=16") == ("data.frames", 16)
    assert parse_override("data.videos.sample_fps=null") == ("data.videos.sample_fps", None)
    assert parse_override("data.shapes.size=[0.1, 0.2]") == ("data.shapes.size", [0.1, 0.2])
    cfg = load_config(REPO / "params.yaml", ["data.frames=4", "seed=7"])
    assert (cfg.data.frames, cfg.seed) == (4, 7)


@pytest.mark.parametrize("override, path", [("data.nope=1", "data.nope"), ("nope.x=1", "nope")])
def test_override_of_unknown_key_is_refused(override, path):
    with pytest.raises(ConfigError, match=path):
        load_config(REPO / "params.yaml", [override])


def test_impossible_motion_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="leaves the frame"):
        load_config(REPO / "params.yaml", ["data.frames=40"])
    videos = load_config(REPO / "params.yaml", ["data.frames=40", "data.source=videos"])  # no shapes in real footage
    assert videos.data.frames == 40


def test_holdout_must_come_from_the_vocabulary():
    with pytest.raises(ConfigError, match="holdout"):
        load_config(REPO / "params.yaml", ["data.shapes.holdout=[pink hexagon]"])


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_cli_prints_one_line_and_exits_2(tmp_path):
    path = write_params(tmp_path, lambda t: t.replace("seed: 0", "seed: 0\nsede: 1", 1))
    result = subprocess.run([sys.executable, "-m", "dcm.ops.cli", "config", "show", "--params", str(path)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "sede: unknown key" in result.stderr


@pytest.mark.parametrize("override, message", [
    ("distill.kappa=49", "distill.kappa \\(49\\) must lie in"),
    ("distill.detail_phases=37", "distill.detail_phases \\(37\\) exceeds the detail segment's 36 nodes"),
    ("evaluate.student_steps=[4,200]", "evaluate.student_steps: 200 steps put 100 steps into the segment"),
    ("distill.sample_steps=60", "distill.sample_steps: 60 steps"),
    ("serving.default_steps=60", "serving.default_steps \\(60\\) exceeds serving.max_steps"),
    ("distill.discriminator.warmup_steps=30", "warmup_steps \\(30\\) is not below distill.detail.steps \\(30\\)"),
])
def test_impossible_step_settings_are_refused_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "params.yaml", [override])

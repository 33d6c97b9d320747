"""The evaluation report: a markdown table, a CSV for `dvc plots`, PNG charts and a sample grid."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from dcm.io import atomic_path

COLUMNS = ("judge_overall", "judge_colour", "judge_shape", "judge_motion", "psnr_vs_teacher", "ssim_vs_teacher",
           "mmd_vs_real", "saturation_mean", "oversaturated_fraction", "temporal_flicker", "patch_grid", "latency_s",
           "speedup")
REPORT_FILE, TABLE_FILE, GRID_FILE = "report.md", "quality.csv", "samples.png"
QUALITY = "quality"  # quality.csv's plotted column: the active gate's primary metric (the judge for shapes)
CHARTS = (("judge_overall", "judge overall (higher is better)"),
          ("psnr_vs_teacher", "PSNR vs teacher, dB (higher is closer)"),
          ("speedup", "speedup vs the teacher"))  # each drawn to <metric>.png (a note where no row has it)
NOT_MEASURED = {"judge_overall": "the prompts carry no shapes ground truth"}
GRID_FRAMES = 4  # frames per sample row
GAP = 2  # pixels between rows


def columns(rows: list[dict]) -> list[str]:
    """The fixed columns some row has, then every vbench dimension scored."""
    vbench = sorted({key for row in rows for key in row if key.startswith("vbench_")})
    return [c for c in COLUMNS if any(c in row for row in rows)] + vbench


def markdown(rows: list[dict], device: str) -> str:
    present = columns(rows)
    lines = ["# Evaluation: teacher vs DCM vs baselines", "",
             f"Same prompts, seeds and initial noise for every model; latency per clip on {device}, measured in "
             "this run (speedup = teacher latency / model latency).", "",
             "| model | steps | " + " | ".join(present) + " |", "|---|---|" + "---|" * len(present)]
    for row in rows:
        cells = [f"{row[c]:.4g}" if c in row else "–" for c in present]
        lines.append(f"| {row['model']} | {row['steps']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict], path: Path, quality: str) -> None:
    """One line per model and step count; `quality` (a metric name) is copied into the QUALITY column, the one
    DVC plots as a series per model whatever the data source."""
    fields = ["model", "steps", QUALITY, *columns(rows)]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**row, QUALITY: row.get(quality, "")} for row in rows)


def write_charts(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    for metric, title in CHARTS:
        figure, axis = plt.subplots(figsize=(5, 3.2))
        if not any(metric in row for row in rows):  # still drawn: DVC tracks every chart, whatever the source
            axis.text(0.5, 0.5, f"not measured in this evaluation\n({NOT_MEASURED.get(metric, 'no row has it')})",
                      ha="center", va="center", transform=axis.transAxes)
            axis.set_axis_off()
        for model in dict.fromkeys(row["model"] for row in rows):
            points = [(row["steps"], row[metric]) for row in rows if row["model"] == model and metric in row]
            if not points:
                continue
            if model == "teacher":
                axis.axhline(points[0][1], color="black", linestyle="--", label=f"teacher ({points[0][0]} steps)")
            else:
                axis.plot(*zip(*points), marker="o", label=model)
        axis.set_xlabel("steps")
        axis.set_title(title)
        if axis.lines:
            axis.legend()
        figure.tight_layout()
        path = out / f"{metric}.png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=100)
        plt.close(figure)
        paths.append(path)
    return paths


def sample_grid(samples: dict[str, np.ndarray], rows: int) -> np.ndarray:
    """One row per (prompt, model): GRID_FRAMES evenly spaced frames side by side."""
    strips = []
    for index in range(rows):
        for clips in samples.values():
            clip = clips[index]
            picks = np.linspace(0, len(clip) - 1, GRID_FRAMES).round().astype(int)
            strips.append(np.concatenate(list(clip[picks]), axis=1))
            strips.append(np.full((GAP, strips[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(strips[:-1], axis=0)


def write_grid(samples: dict[str, np.ndarray], rows: int, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(sample_grid(samples, rows)).save(tmp, format="png")


def write_loss_curve(losses: list[float], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(5, 3.2))
    axis.plot(range(1, len(losses) + 1), losses, linewidth=0.8)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_yscale("log" if min(losses, default=0) > 0 else "linear")
    axis.set_title(title)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def write_report(rows: list[dict], samples: dict[str, np.ndarray], captions: list[str], out: Path,
                 device: str, quality: str, notes: list[str] = ()) -> dict[str, Path]:
    files = {"report": out / REPORT_FILE, "table": out / TABLE_FILE, "grid": out / GRID_FILE}
    order = "; ".join(samples)
    text = markdown(rows, device) + (f"\n`{GRID_FILE}`: for each of the prompts {captions}, one row per model "
                                     f"({order}), {GRID_FRAMES} frames each.\n") + "".join(f"\n{note}\n" for note in notes)
    with atomic_path(files["report"]) as tmp:
        Path(tmp).write_text(text)
    write_table(rows, files["table"], quality)
    write_grid(samples, len(captions), files["grid"])
    for path in write_charts(rows, out):
        files[path.stem] = path
    return files

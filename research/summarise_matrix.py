"""RESULTS.md's tables from the matrix.json files that research/run_matrix.py wrote, and sample grids.

    python research/summarise_matrix.py results/<run>/matrix.json [more.json ...] [--plan research/plans/claim.yaml]
        [--samples results/<run>/samples.safetensors [more ...] --grid grid.png --gif grid.gif]

Each number is the mean over the seeds a run finished, ± the sample standard deviation (n − 1) when there
are several. A job (or a sample row) found in several files is taken from the last one. The grid and the
GIF show, for the same prompts and noise, the teacher and each run of the plan's `final` list at every step
count, from every samples file given (runs finished on different machines).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
REFERENCE_PLACEMENT = "_reference"  # dcm/stages/evaluate.py's suffix (not imported: it would load torch for a table)
COLUMNS = (("judge_overall", "judge overall", 3), ("judge_shape", "shape", 3), ("judge_colour", "colour", 3),
           ("judge_coherence", "coherence", 3), ("judge_motion", "motion", 3),
           ("psnr_vs_teacher", "PSNR vs teacher", 2), ("ssim_vs_teacher", "SSIM vs teacher", 3),
           ("oversaturated_fraction", "over-saturated", 3), ("temporal_flicker", "temporal flicker", 4))
# sub-scores only some profiles have (the textured one's): a column where any row of the table carries them;
# then the texture score of each surface (judge_texture_<surface>), in the order the rows list them
OPTIONAL_COLUMNS = (("judge_texture", "texture", 3),)
SURFACE_PREFIX = "judge_texture_"
LATE_COLUMNS = (("patch_grid", "patch grid", 2),)  # after the fixed ones, where a row has it (since 2026-12-07)
CONTRAST_PREFIX = "judge_contrast_"  # last, each surface's shading strength (a diagnostic; since 2026-12-07)
SEED = "seed"  # collect's own key in each row: which seed made it (the claim lists them one by one)


def load_jobs(paths: list[Path]) -> dict[str, dict]:
    """Every job of the given matrix.json files; one found in several is taken from the last."""
    jobs = {}
    for path in paths:
        jobs |= json.loads(path.read_text())
    return jobs


def collect(paths: list[Path]) -> dict[tuple[str, int], list[dict]]:
    """(run, steps) → one metrics row per finished seed; the teacher under ("teacher", its steps)."""
    jobs = load_jobs(paths)
    rows: dict[tuple[str, int], list[dict]] = {}
    teacher = {}
    for job in jobs.values():
        for key, row in job.get("metrics", {}).items():
            model, _, steps = key.rpartition("_")
            if not (isinstance(row, dict) and steps.isdigit()):  # device, prompts, vbench settings
                continue
            if model == "teacher":
                teacher[int(steps)] = row
            else:  # a PCM job's rows at the reference's step placement are a run of their own
                run = job["run"] + (REFERENCE_PLACEMENT if model.endswith(REFERENCE_PLACEMENT) else "")
                rows.setdefault((run, int(steps)), []).append({**row, SEED: int(job["seed"])})
    for steps, row in teacher.items():
        rows[("teacher", steps)] = [row]
    return rows


def cell(values: list[float], digits: int) -> str:
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def surface_columns(shown: list[dict], prefix: str, title: str) -> tuple:
    """One column per surface that some shown row carries a `prefix<surface>` metric of, in the rows' order."""
    surfaces = dict.fromkeys(key for row in shown for key in row if key.startswith(prefix))
    return tuple((key, f"{title}: {key.removeprefix(prefix)}", 3) for key in surfaces)


def table(rows: dict, runs: list[str], steps: list[int] | None) -> str:
    keys = [k for k in rows if k[0] == "teacher"] + [(run, s) for run in runs for s in sorted({k[1] for k in rows})
                                                      if (run, s) in rows and (steps is None or s in steps)]
    shown = [r for k in keys for r in rows[k]]
    columns = (COLUMNS[:2] + tuple(c for c in OPTIONAL_COLUMNS if any(c[0] in r for r in shown))
               + surface_columns(shown, SURFACE_PREFIX, "texture") + COLUMNS[2:]
               + tuple(c for c in LATE_COLUMNS if any(c[0] in r for r in shown))
               + surface_columns(shown, CONTRAST_PREFIX, "contrast"))
    lines = ["| run | steps | seeds | " + " | ".join(title for _, title, _ in columns) + " |",
             "|---" * (3 + len(columns)) + "|"]
    for run, s in keys:
        seeds = rows[(run, s)]
        cells = [cell([r[m] for r in seeds], d) if all(m in r for r in seeds) else "–" for m, _, d in columns]
        lines.append(f"| {run} | {s} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claim(rows: dict, run: str = "dcm", steps: int = 4) -> str:
    """The issue's test: DCM-4 within 5 % of the teacher, ahead of LCM-4 and PCM-4 (at both step placements) by
    more than the spread."""
    teacher = next(r[0]["judge_overall"] for k, r in rows.items() if k[0] == "teacher")
    name = f"{run}-{steps}"
    if (run, steps) not in rows:
        return f"{name}: no finished run yet."
    def stats(other):
        values = [r["judge_overall"] for r in rows[(other, steps)]]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
    def by_seed(other):
        return " / ".join(f"{r['judge_overall']:.3f} (s{r[SEED]})" for r in sorted(rows[(other, steps)],
                                                                                 key=lambda r: r[SEED]))
    mean, sd = stats(run)
    relative = f"{100 * (mean / teacher - 1):+.1f} %" if teacher else "(teacher scores 0)"
    lines = [f"{name} {mean:.3f} vs teacher {teacher:.3f}: {relative} "
             f"({'within' if mean >= 0.95 * teacher else 'outside'} 5 %)", f"{name} per seed: {by_seed(run)}"]
    for other in ("lcm", "pcm", "pcm" + REFERENCE_PLACEMENT):
        if (other, steps) in rows:
            other_mean, other_sd = stats(other)
            margin = mean - other_mean
            verdict = "ahead by more than the spread" if margin > sd + other_sd else (
                "behind by more than the spread" if -margin > sd + other_sd else "within the spread")
            lines.append(f"{name} − {other}-{steps} = {margin:+.3f} (spreads {sd:.3f}, {other_sd:.3f}): {verdict}; "
                         f"{other}-{steps} per seed: {by_seed(other)}")
    return "\n".join(lines)


def health(paths: list[Path]) -> str:
    """The discriminator's health per detail job, from its logged curve: the hinge (2 = chance) and real-vs-fake
    accuracy per token at the first logged step and over the last third of the run (mean and worst), per clip
    over that last third where the job logged it, and the GAN term's share of the generator's gradient."""
    jobs = load_jobs(paths)
    lines = ["| job | steps | d_hinge first | d_hinge last third: mean (max) | d_accuracy first | "
             "d_accuracy last third: mean (min) | clip accuracy, last third | GAN share of the gradient, last third |",
             "|---" * 8 + "|"]
    for name, job in jobs.items():
        curve = [entry for entry in job.get("curve", []) if "d_hinge" in entry]
        if not curve:
            continue
        tail = curve[len(curve) - max(1, len(curve) // 3):]
        hinge, accuracy = [e["d_hinge"] for e in tail], [e["d_accuracy"] for e in tail]
        clips = f"{statistics.mean(e['d_clip_accuracy'] for e in tail):.3f}" if "d_clip_accuracy" in tail[0] else "–"
        lines.append(f"| {name} | {curve[-1]['step']} | {curve[0]['d_hinge']:.3f} | {statistics.mean(hinge):.3f} "
                     f"({max(hinge):.3f}) | {curve[0]['d_accuracy']:.3f} | {statistics.mean(accuracy):.3f} "
                     f"({min(accuracy):.3f}) | {clips} | {statistics.mean(e['gan_grad_share'] for e in tail):.2f} |")
    return "\n".join(lines) if len(lines) > 2 else "no detail job logged the discriminator's health"


def load_samples(paths: list[Path]) -> dict[str, np.ndarray]:
    """Every row of every samples file; a row in several files is taken from the last one."""
    from safetensors.torch import load_file
    return {key: clip.numpy() for path in paths for key, clip in load_file(path).items()}


def grids(clips: dict[str, np.ndarray], runs: list[str], png: Path, gif: Path | None, frames: int = 8) -> None:
    """One row per model and step count, one column group per prompt: frames side by side (PNG), or the
    whole grid animated over time (GIF)."""
    def position(key: str) -> tuple[int, int]:  # "<run>/<model>_<steps>": plan order, then steps
        return runs.index(key.split("/")[0]), int(key.rsplit("_", 1)[1])

    order = sorted(k for k in clips if k.startswith("teacher")) + sorted(
        (k for k in clips if k.split("/")[0] in runs), key=position)
    stack = np.stack([clips[k] for k in order])  # (rows, prompts, frames, H, W, 3)
    picks = np.linspace(0, stack.shape[2] - 1, frames).round().astype(int)
    still = np.concatenate([np.concatenate([np.concatenate(list(clip[picks]), axis=1) for clip in row], axis=1)
                            for row in stack], axis=0)
    Image.fromarray(still).save(png)
    if gif is not None:
        pictures = [Image.fromarray(np.concatenate([np.concatenate(list(row[:, t]), axis=1) for row in stack], axis=0))
                    .resize((stack.shape[1] * stack.shape[4] * 4, stack.shape[0] * stack.shape[3] * 4), Image.NEAREST)
                    for t in range(stack.shape[2])]
        pictures[0].save(gif, save_all=True, append_images=pictures[1:], duration=125, loop=0)
    print(f"grid rows (top to bottom): {', '.join(order)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("matrices", nargs="+", type=Path)
    parser.add_argument("--plan", type=Path, default=REPO / "research" / "plans" / "claim.yaml")
    parser.add_argument("--samples", type=Path, nargs="+")
    parser.add_argument("--grid", type=Path)
    parser.add_argument("--gif", type=Path)
    args = parser.parse_args()
    plan = yaml.safe_load(args.plan.read_text())
    rows = collect(args.matrices)
    tables = plan.get("tables", {})
    print("## Comparison\n\n" + table(rows, tables.get("comparison", []), None) + "\n")
    print("## Ablation ladder (4 steps)\n\n" + table(rows, tables.get("ladder", []), [4]) + "\n")
    print("## Tuning (4 steps)\n\n" + table(rows, tables.get("tuning", []), [4]) + "\n")
    print("## The claim\n\n" + "\n\n".join(claim(rows, run) for run in tables.get("claim", ["dcm"])) + "\n")
    print("## The discriminator's health (detail jobs)\n\n" + health(args.matrices))
    if args.samples and args.grid:
        grids(load_samples(args.samples), plan.get("final", []), args.grid, args.gif)


if __name__ == "__main__":
    main()

"""The checkout's git state, for provenance tags. Plain subprocess calls, no MLflow or Prefect: the research
harness asks it on bare GPU machines too."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_state(root: Path) -> dict[str, str]:
    """{"git_commit": HEAD or "unknown", "git_dirty": "True" when tracked files have uncommitted changes}."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""
    return {"git_commit": git("rev-parse", "HEAD") or "unknown",
            "git_dirty": str(bool(git("status", "--porcelain", "--untracked-files=no")))}

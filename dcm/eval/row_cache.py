"""Finished evaluation rows, kept across a killed run.

A row is one model at one step count: its metrics and its clips. Each is stored under `rows/` with the
fingerprint of everything that produced it (model bytes, prompts, settings, the evaluation code, the
device), so a re-run after a kill reuses exactly the rows that would come out the same, and redoes the
rest. Clips are safetensors (nothing unpickled); the JSON record is written last, so a row counts only
once both files are whole.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dcm.io import atomic_path, read_json, sha256_file, sha256_json, write_json_atomic

ROWS_DIR = "rows"


@functools.cache  # once per process: every row's fingerprint includes it
def code_hash() -> str:
    """sha256 over the dcm package's sources: a row made by other code is never reused."""
    root = Path(__file__).resolve().parents[1]  # the dcm package folder
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def row_fingerprint(**inputs) -> str:
    return sha256_json({**inputs, "code": code_hash()})


def _paths(folder: Path, name: str) -> tuple[Path, Path]:
    return folder / f"{name}.json", folder / f"{name}.safetensors"


def load_row(folder: Path, name: str, fingerprint: str) -> tuple[dict, np.ndarray] | None:
    """The stored row and clips if both are whole and were made from the same inputs, else None."""
    record_path, clips_path = _paths(folder, name)
    if not (record_path.is_file() and clips_path.is_file()):
        return None
    try:
        record = read_json(record_path)
        if record.get("fingerprint") != fingerprint or record.get("clips_sha256") != sha256_file(clips_path):
            return None
        return record["row"], load_file(clips_path)["clips"].numpy()
    except (OSError, ValueError, KeyError):
        return None  # damaged: redo the row


def save_row(folder: Path, name: str, fingerprint: str, row: dict, clips: np.ndarray) -> None:
    record_path, clips_path = _paths(folder, name)
    with atomic_path(clips_path) as tmp:
        save_file({"clips": torch.from_numpy(np.ascontiguousarray(clips))}, str(tmp))
    write_json_atomic(record_path, {"fingerprint": fingerprint, "clips_sha256": sha256_file(clips_path), "row": row})

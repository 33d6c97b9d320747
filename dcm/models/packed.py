"""Model folders that travel inside the repository (weights/): a tar of the diffusers folder split into parts
small enough for git hosts, beside a JSON record of how it was made (its content hash among it)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

from dcm.errors import StageError
from dcm.models.family import folder_hash

PART_PREFIX = "teacher_model.tar.part"
RECORD = "teacher_metrics.json"  # the teacher stage's manifest when it was trained, plus its command and curve
PART_BYTES = 15 * 2**20


def pack(folder: Path, out: Path, archive: Path) -> list[Path]:
    """Tar `folder` (as `model/`) and split it into PART_BYTES parts in `out`."""
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname="model")
    data = archive.read_bytes()
    parts = []
    for number, begin in enumerate(range(0, len(data), PART_BYTES)):
        parts.append(out / f"{PART_PREFIX}{number}")
        parts[-1].write_bytes(data[begin:begin + PART_BYTES])
    return parts


def unpack(parts: Path, dest: Path) -> None:
    """The packed folder into `dest` (replaced). Tar's data filter: no links out, no absolute paths, no devices."""
    files = sorted(parts.glob(f"{PART_PREFIX}*"), key=lambda p: int(p.name.removeprefix(PART_PREFIX)))
    if not files:
        raise StageError(f"{parts} holds no {PART_PREFIX}* files: not a packed model folder (weights/README.md)")
    staging = dest.with_name(f".unpack-{dest.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in files))) as tar:
            tar.extractall(staging, filter="data")
    except tarfile.TarError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise StageError(f"{parts}: the parts do not form a readable tar ({error}); a part is missing or damaged "
                         "(git lfs or a partial copy?)") from None
    shutil.rmtree(dest, ignore_errors=True)
    (staging / "model").rename(dest)
    shutil.rmtree(staging)


def read_record(parts: Path) -> dict:
    path = parts / RECORD
    if not path.is_file():
        raise StageError(f"{path} not found: a packed teacher needs its record (weights/README.md)")
    return json.loads(path.read_text())


def unpack_verified(parts: Path, dest: Path) -> dict:
    """unpack, then check the folder's content hash against the record's: returns the record."""
    record = read_record(parts)
    unpack(parts, dest)
    found = folder_hash(dest)
    if found != record["content_hash"]:
        shutil.rmtree(dest)  # never leave damaged weights where a later stage could load them
        raise StageError(f"{parts}: the unpacked teacher hashes to {found[:16]}…, its record says "
                         f"{record['content_hash'][:16]}…: the parts were changed or damaged; restore them from git")
    return record

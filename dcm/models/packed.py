"""Model folders that travel inside the repository (weights/): a tar of the diffusers folder split into parts
small enough for git hosts, beside a JSON record of how it was made (its content hash among it).

A pack is `exact` (the folder's own bytes) or `int8` (its safetensors files block-wise int8, int8_weights.py: about
a quarter of the bytes). Either unpacks to an ordinary diffusers folder; the record's content hash is that of the
unpacked folder, which for int8 is the decoded one."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Literal

from dcm.config import ConfigError
from dcm.errors import StageError
from dcm.models.family import folder_hash
from dcm.models.int8_weights import ENCODED_SUFFIX, decode_file, encode_file

PART_PREFIX = "teacher_model.tar.part"
RECORD = "teacher_metrics.json"  # the teacher stage's manifest when it was trained, plus its command and curve
PART_BYTES = 15 * 2**20


Encoding = Literal["exact", "int8"]


def pack(folder: Path, out: Path, archive: Path, encoding: Encoding = "exact") -> str:
    """Tar `folder` (as `model/`, safetensors int8-encoded if asked) and split it into PART_BYTES parts in `out`
    (replacing any there). Returns the content hash its record must carry: that of the folder unpack makes."""
    with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:
        staging = Path(tmp) / "model"
        shutil.copytree(folder, staging)
        if encoding == "int8":
            for path in sorted(staging.rglob("*.safetensors")):
                encode_file(path, path.with_name(path.name + ENCODED_SUFFIX))
                path.unlink()
        with tarfile.open(archive, "w") as tar:
            tar.add(staging, arcname="model")
    data = archive.read_bytes()
    for stale in out.glob(f"{PART_PREFIX}*"):
        stale.unlink()
    for number, begin in enumerate(range(0, len(data), PART_BYTES)):
        (out / f"{PART_PREFIX}{number}").write_bytes(data[begin:begin + PART_BYTES])
    with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:  # hash what a reader will get, read as it will
        unpack(out, Path(tmp) / "model")
        return folder_hash(Path(tmp) / "model")


def decode_folder(folder: Path) -> None:
    """Every int8-encoded safetensors file in `folder` replaced by its decoded file."""
    for encoded in sorted(folder.rglob(f"*.safetensors{ENCODED_SUFFIX}")):
        decode_file(encoded, encoded.with_name(encoded.name.removesuffix(ENCODED_SUFFIX)))
        encoded.unlink()


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
    try:
        decode_folder(staging / "model")
    except Exception as error:  # safetensors' own error type, a bad header, a wrong block size: all mean damage
        shutil.rmtree(staging, ignore_errors=True)
        raise StageError(f"{parts}: an int8-encoded weights file does not decode ({error}); the parts were changed "
                         "or damaged: restore them from git") from None
    shutil.rmtree(dest, ignore_errors=True)
    (staging / "model").rename(dest)
    shutil.rmtree(staging)


def read_record(parts: Path) -> dict:
    path = parts / RECORD
    if not path.is_file():
        raise StageError(f"{path} not found: a packed teacher needs its record (weights/README.md)")
    return json.loads(path.read_text())


def check_finished(parts: Path) -> None:
    """Refuse a teacher that stopped before its step count (research/run_stages.py --resumable packs one as
    teacher_partial/): students of a half-trained teacher would be measured against the wrong ceiling."""
    progress = read_record(parts).get("partial")
    if progress is not None:
        raise ConfigError(f"{parts} is a teacher stopped at step {progress['steps']} of {progress['of']}, not a "
                          f"finished one: continue it (research/run_stages.py --continue-teacher {parts}) or finish "
                          "it where it stopped (research/finish_teacher.py)")


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

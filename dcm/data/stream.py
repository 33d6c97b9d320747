"""An endless, exactly resumable stream of training samples read from shards.

Epoch e reads the split's shards in an order and shuffle seeded by (seed, e). The position is
(epoch, offset); resuming skips `offset` raw samples before decoding, so a resumed run sees exactly
the samples an uninterrupted run would have seen, in the same order.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Iterator

from dcm.data.reader import decode_sample, make_dataset


class SampleStream:
    def __init__(self, shard_dir: str | Path, split: str, shuffle_buffer: int, seed: int, decode=decode_sample):
        self.shard_dir, self.split, self.shuffle_buffer, self.seed = shard_dir, split, shuffle_buffer, seed
        self.decode = decode
        self.epoch, self.offset = 0, 0

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def restore(self, state: dict) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])

    def _epoch(self) -> Iterator[dict]:
        raw = make_dataset(self.shard_dir, self.split, shuffle_buffer=self.shuffle_buffer,
                           seed=self.seed * 100_003 + self.epoch, decode=None)
        for sample in islice(raw, self.offset, None):
            self.offset += 1
            yield self.decode(sample)

    def __iter__(self) -> Iterator[dict]:
        while True:
            empty = True
            for sample in self._epoch():
                empty = False
                yield sample
            if empty and self.offset == 0:
                raise ValueError(f"split {self.split!r} in {self.shard_dir} yields no samples")
            self.epoch, self.offset = self.epoch + 1, 0

    def batches(self, size: int) -> Iterator[list[dict]]:
        iterator = iter(self)
        while True:
            yield [next(iterator) for _ in range(size)]


def produce_batches(stream, size: int, out_queue) -> None:
    """Body of the prefetch process: put (batch, stream state after it) forever; on a data error put
    ("error", message) once. Errors travel as text: an exception that fails to pickle would be lost."""
    try:
        for batch in stream.batches(size):
            out_queue.put((batch, stream.state()))
    except Exception as error:  # noqa: BLE001 - every data error must reach the training process
        out_queue.put(("error", f"{type(error).__name__}: {error}"))

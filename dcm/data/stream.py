"""An endless, exactly resumable stream of training samples read from shards.

Epoch e reads the split's shards in an order and shuffle seeded by (seed, e). The position is
(epoch, offset); resuming skips `offset` raw samples before decoding, so a resumed run sees exactly
the samples an uninterrupted run would have seen, in the same order.
"""

from __future__ import annotations

import queue
from itertools import islice
from pathlib import Path
from typing import Iterator

from dcm.data.reader import decode_sample, make_dataset


class SampleStream:
    def __init__(self, shard_dir: str | Path, split: str, shuffle_buffer: int, seed: int, decode=decode_sample,
                 keep=None):
        """keep: optional predicate on decoded samples (e.g. "has a teacher trajectory"); skipped samples
        still advance the position, so resume stays exact."""
        self.shard_dir, self.split, self.shuffle_buffer, self.seed = shard_dir, split, shuffle_buffer, seed
        self.decode, self.keep = decode, keep
        self.epoch, self.offset = 0, 0

    def state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def restore(self, state: dict) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])

    def _epoch(self) -> Iterator[dict]:
        # Every rank reads the same stream: the data-parallel loop slices each batch (train/distributed.py).
        raw = make_dataset(self.shard_dir, self.split, shuffle_buffer=self.shuffle_buffer,
                           seed=self.seed * 100_003 + self.epoch, decode=None, split_by_rank=False)
        for sample in islice(raw, self.offset, None):
            self.offset += 1
            decoded = self.decode(sample)
            if self.keep is None or self.keep(decoded):
                yield decoded

    def __iter__(self) -> Iterator[dict]:
        while True:
            empty, whole_epoch = True, self.offset == 0
            for sample in self._epoch():
                empty = False
                yield sample
            if empty and whole_epoch:
                raise ValueError(f"split {self.split!r} in {self.shard_dir} yields no samples"
                                 + (" that the stage can use" if self.keep else ""))
            self.epoch, self.offset = self.epoch + 1, 0

    def batches(self, size: int) -> Iterator[list[dict]]:
        iterator = iter(self)
        while True:
            yield [next(iterator) for _ in range(size)]


def produce_batches(stream, size: int, out_queue, stop=None, poll_s: float = 0.1) -> None:
    """Body of a prefetch thread or process: put (batch, stream state after it) until `stop` is set; on a
    data error put ("error", message) once. Errors travel as text: an exception that fails to pickle
    would be lost on the way out of a process."""
    try:
        for batch in stream.batches(size):
            while True:
                if stop is not None and stop.is_set():
                    return
                try:
                    out_queue.put((batch, stream.state()), timeout=poll_s)
                    break
                except queue.Full:
                    continue
    except Exception as error:  # noqa: BLE001 - every data error must reach the training process
        out_queue.put(("error", f"{type(error).__name__}: {error}"))

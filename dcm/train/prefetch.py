"""Batches assembled ahead of the training step in a separate process.

A process, not a thread: tar reading and PNG decoding are Python-heavy and a thread would share the
GIL with the step's own Python (kernel launches, optimiser), measured on an H100 as the two costs adding
up. Resume stays exact: each batch carries the stream position right after it, and checkpoints store
the position after the last batch actually consumed, not after what was prefetched.
"""

from __future__ import annotations

import multiprocessing
import queue

from dcm.data.stream import produce_batches
from dcm.errors import StageError

POLL_S = 1.0  # how often a waiting trainer checks that the prefetch process is still alive


class Prefetcher:
    def __init__(self, stream, batch_size: int, depth: int):
        self.consumed_state = stream.state()
        context = multiprocessing.get_context("spawn")  # fork is unsafe once CUDA is initialised
        self._queue = context.Queue(maxsize=max(depth, 1))
        self._process = context.Process(target=produce_batches, args=(stream, batch_size, self._queue),
                                        daemon=True, name="dcm-prefetch")
        self._process.start()

    def __next__(self) -> list[dict]:
        while True:
            try:
                batch, state = self._queue.get(timeout=POLL_S)
                break
            except queue.Empty:
                if not self._process.is_alive():
                    raise StageError(f"the data prefetch process died (exit code {self._process.exitcode}); "
                                     "see its error above") from None
        if batch == "error":
            raise StageError(f"reading training data failed: {state}")
        self.consumed_state = state
        return batch

    def close(self) -> None:
        self._process.terminate()
        self._process.join()
        self._queue.close()

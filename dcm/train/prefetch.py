"""Batches assembled ahead of the training step, on a thread or in a separate process.

Process (the `auto` choice on CUDA): tar reading and PNG decoding are Python-heavy, and on a thread they
share the GIL with the step's own Python (kernel launches, optimiser) — measured on an H100 as the two
costs adding up. Thread (the `auto` choice on CPU): the step and the loader share the same cores anyway,
and a process would only add its start-up (~2 s of imports). A process is started with `spawn` (fork is
unsafe once CUDA is initialised), so scripts that train must guard their entry point with
`if __name__ == "__main__":`, as for any multiprocessing code.

Resume stays exact either way: each batch carries the stream position right after it, and checkpoints
store the position after the last batch actually consumed, not after what was prefetched.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading

from dcm.data.stream import produce_batches
from dcm.errors import StageError

POLL_S = 1.0  # how often a waiting trainer checks that the prefetch worker is still alive


def prefetch_kind(setting: str, device_type: str) -> str:
    if setting == "auto":
        return "process" if device_type == "cuda" else "thread"
    return setting


class Prefetcher:
    def __init__(self, stream, batch_size: int, depth: int, kind: str = "thread"):
        self.consumed_state = stream.state()
        if kind == "process":
            context = multiprocessing.get_context("spawn")
            self._queue, self._stop = context.Queue(maxsize=max(depth, 1)), context.Event()
            self._worker = context.Process(target=produce_batches, args=(stream, batch_size, self._queue, self._stop),
                                           daemon=True, name="dcm-prefetch")
        elif kind == "thread":
            self._queue, self._stop = queue.Queue(maxsize=max(depth, 1)), threading.Event()
            self._worker = threading.Thread(target=produce_batches, args=(stream, batch_size, self._queue, self._stop),
                                            daemon=True, name="dcm-prefetch")
        else:
            raise ValueError(f"prefetch must be 'thread' or 'process', got {kind!r}")
        self._worker.start()

    def __next__(self) -> list[dict]:
        while True:
            try:
                batch, state = self._queue.get(timeout=POLL_S)
                break
            except queue.Empty:
                if not self._worker.is_alive():
                    raise StageError("the data prefetch worker stopped without a batch or an error; see its output "
                                     "above") from None
        if isinstance(batch, str) and batch == "error":
            raise StageError(f"reading training data failed: {state}")
        self.consumed_state = state
        return batch

    def close(self) -> None:
        self._stop.set()
        if isinstance(self._worker, threading.Thread):
            self._worker.join()
            return
        self._worker.join(timeout=5)
        if self._worker.is_alive():
            self._worker.terminate()
            self._worker.join()
        self._queue.close()
        self._queue.cancel_join_thread()

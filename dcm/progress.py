"""Progress bars for the long loops (training steps, shards, evaluation rows): rate and ETA on a terminal,
from rank 0 only, and nothing at all where output is not a terminal (CI logs, `dcm pipeline`'s captured
`dvc repro`), which keep the stages' own log lines. TQDM_DISABLE=1 silences them everywhere."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress(total: int, desc: str, unit: str = "it", initial: int = 0) -> tqdm:
    shown = int(os.environ.get("RANK", "0")) == 0 and sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not shown, dynamic_ncols=True,
                leave=False, file=sys.stderr)


def tracked(items: list, desc: str, unit: str = "it"):
    """Iterate over `items` with a progress bar."""
    with progress(len(items), desc, unit) as bar:
        for item in items:
            yield item
            bar.update()

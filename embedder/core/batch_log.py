"""The batch log: the exact batches the scheduler formed, one JSON line each (off by default).

A diagnostic for finding where serving time goes: `streamrec-bench overhead` replays a server's logged
batches on the model alone and compares them with ideal length-sorted batches of the same rows
(docs/benchmarks.md). Each line is `{"ids": [[token ids of one text], ...]}`, the rows unpadded, in
batch order, as the scheduler handed them to inference (before padding). It holds the texts' token
ids, i.e. the texts themselves: switch it on only where that is acceptable.

Writes go through a buffered file on the scheduler's thread: encoding a batch of 64 item texts (~15 kB
of JSON) took ~0.4 ms here, ~0.006 ms per text, a few percent of the server's CPU per item. The replay
measures the model on the logged batches, so this cost does not enter it; the server's own figures
taken with the log on are a few percent low.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from embedder.errors import ConfigError


class BatchLog:
    """Appends batches to `path` (created or truncated at open); thread-safe; `close()` flushes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._fh: TextIO | None = self.path.open("w", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"batch_log: cannot write {self.path}: {exc.strerror}") from None
        self._lock = threading.Lock()
        self.batches = 0

    def record(self, rows: Sequence[Sequence[int]]) -> None:
        """Log one batch's unpadded token rows (a closed log ignores it)."""
        line = json.dumps({"ids": [list(r) for r in rows]}, separators=(",", ":"))
        with self._lock:
            if self._fh is not None:
                self._fh.write(line + "\n")
                self.batches += 1

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def read_batch_log(path: str | Path) -> Iterator[list[list[int]]]:
    """The batches of a log, in the order they ran; an unreadable line is skipped (a killed server's
    torn last line)."""
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            try:
                yield json.loads(line)["ids"]
            except (json.JSONDecodeError, KeyError):
                continue

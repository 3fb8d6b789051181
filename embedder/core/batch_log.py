"""The batch log: the exact batches the scheduler formed, one JSON line each (off by default).

A diagnostic for finding where serving time goes: `streamrec-bench overhead` replays a server's logged
batches on the model alone and compares them with ideal length-sorted batches of the same rows
(docs/benchmarks.md). Each line is `{"model": bundle sha256, "ids": [[token ids of one text], ...]}`,
the rows unpadded, in batch order, as the scheduler handed them to inference (before padding). Every
loaded model version appends to the same file (one `write` per line, so lines never interleave), and
the reader picks one model's batches by its sha256. It holds the texts' token
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
    """Appends `model`'s batches to `path` (created if absent); thread-safe; each line is flushed."""

    def __init__(self, path: str | Path, model: str = "") -> None:
        self.path = Path(path)
        self.model = model
        try:
            self._fh: TextIO | None = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"batch_log: cannot write {self.path}: {exc.strerror}") from None
        self._lock = threading.Lock()
        self.batches = 0

    def record(self, rows: Sequence[Sequence[int]]) -> None:
        """Log one batch's unpadded token rows (a closed log ignores it)."""
        line = json.dumps({"model": self.model, "ids": [list(r) for r in rows]}, separators=(",", ":"))
        with self._lock:
            if self._fh is not None:
                self._fh.write(line + "\n")
                self._fh.flush()  # one write per line: other versions' logs append to the same file
                self.batches += 1

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def read_batch_log(path: str | Path, model: str | None = None) -> Iterator[list[list[int]]]:
    """The batches of a log (of `model`'s sha256 only, if given), in the order they ran; an unreadable
    line is skipped (a killed server's torn last line)."""
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
                ids = record["ids"]
            except (json.JSONDecodeError, KeyError):
                continue
            if model is None or record.get("model") == model:
                yield ids

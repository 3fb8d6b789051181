"""Whether the server still takes new work: the drain state, shared by the engine and every front end.

A front end does not keep its own draining flag: it asks the gate (`check`), and registers what must
stop when the gate closes (e.g. the gRPC front stops reading open streams). Closing is one-way.
"""

from __future__ import annotations

from collections.abc import Callable

from embedder.errors import ShuttingDownError


class ServingGate:
    """Open until `close()`; then `check()` raises `ShuttingDownError` (UNAVAILABLE at the front)."""

    def __init__(self) -> None:
        self._open = True
        self._on_close: list[Callable[[], None]] = []

    @property
    def is_open(self) -> bool:
        return self._open

    def check(self) -> None:
        """Raise `ShuttingDownError` once the server is draining."""
        if not self._open:
            raise ShuttingDownError("server is shutting down; retry on another replica")

    def on_close(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when the gate closes (at once if it is closed); returns an unregister function."""
        if not self._open:
            callback()
            return lambda: None
        self._on_close.append(callback)

        def unregister() -> None:
            if callback in self._on_close:
                self._on_close.remove(callback)

        return unregister

    def close(self) -> None:
        """Refuse new work from now on and tell everyone who asked."""
        if not self._open:
            return
        self._open = False
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            callback()

"""The progress bar the CLI's long commands (``demo``, ``eval``) draw on stderr."""

from __future__ import annotations

from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """A progress bar on a stream: redrawn in place on a terminal, every 10% otherwise."""

    def __init__(self, total: int, label: str, out: TextIO | None) -> None:
        self.total, self.label, self.out, self.done = total, label, out, 0
        self._tty = bool(out is not None and out.isatty())
        self._last = -1

    def step(self) -> None:
        self.done += 1
        if self.out is None:
            return
        pct = self.done * 100 // self.total
        if not self._tty and pct // 10 == self._last // 10 and self.done != self.total:
            return
        self._last = pct
        end = "\r" if self._tty and self.done != self.total else "\n"
        bar = "#" * (pct * 30 // 100)
        self.out.write(f"{self.label} [{bar:<30}] {self.done}/{self.total}{end}")
        self.out.flush()

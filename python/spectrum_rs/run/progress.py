"""Progress reporting for a scan: a tqdm bar on a terminal, periodic plain lines in a
batch log, a user callback, or nothing."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional, TextIO, Union

from ..io.text import printable

PLAIN_EVERY_SECONDS = 30.0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """Counts layers and bytes done. ``progress`` is False (silent), True (bar or plain
    lines on ``stream``) or a callable ``(done_layers, total_layers, done_bytes,
    total_bytes, layer_name)``."""

    def __init__(
        self,
        progress: Union[bool, Callable[..., Any]],
        total_layers: int,
        total_bytes: int,
        stream: Optional[TextIO] = None,
        done_layers: int = 0,
        done_bytes: int = 0,
    ) -> None:
        self.total_layers, self.total_bytes = total_layers, total_bytes
        self.done_layers, self.done_bytes = done_layers, done_bytes
        self.callback = progress if callable(progress) else None
        self.stream = stream or sys.stderr
        self.bar = None
        self.plain = False
        self.started = self.last_line = time.monotonic()
        if progress is True:
            if getattr(self.stream, "isatty", lambda: False)():
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=total_bytes,
                    initial=done_bytes,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    file=self.stream,
                    desc="scanning",
                    dynamic_ncols=True,
                )
            else:
                self.plain = True

    def update(self, layer_name: str, nbytes: int) -> None:
        self.done_layers += 1
        self.done_bytes += nbytes
        if self.callback is not None:
            self.callback(self.done_layers, self.total_layers, self.done_bytes, self.total_bytes, layer_name)
        if self.bar is not None:
            self.bar.update(nbytes)
            self.bar.set_postfix_str(
                f"{self.done_layers}/{self.total_layers} layers, {printable(layer_name)}", refresh=False
            )
        elif self.plain:
            now = time.monotonic()
            if now - self.last_line >= PLAIN_EVERY_SECONDS or self.done_layers == self.total_layers:
                self.last_line = now
                self.stream.write(self.line(layer_name) + "\n")
                self.stream.flush()

    def line(self, layer_name: str) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done_bytes / elapsed if elapsed > 0 else 0.0
        left = (self.total_bytes - self.done_bytes) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done_bytes / self.total_bytes if self.total_bytes else 100.0
        return (
            f"spectrum-rs: {self.done_layers}/{self.total_layers} layers, "
            f"{_human(self.done_bytes)}/{_human(self.total_bytes)} ({pct:.0f}%), "
            f"{_human(rate)}/s, ETA {left:.0f} s, at {printable(layer_name)}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

"""Log files that can never flood the terminal.

Python's logging reports a handler's failed write (a full disk, a read-only folder) by printing
"--- Logging error ---" and a traceback to stderr, once per message: a run of 512 blocks into a
full file system printed 113,194 such lines. A `QuietFileHandler` that fails to write stops
writing instead: the first failure is kept (`failure`) for whoever wants to say why a log is
short, and nothing is printed.
"""

from __future__ import annotations

import logging


class QuietFileHandler(logging.FileHandler):
    """A FileHandler that, when a write fails, closes its file and ignores every later message."""

    def __init__(self, filename, mode: str = "a", *, delay: bool = False):
        self.failure: BaseException | None = None
        super().__init__(filename, mode, delay=delay)

    def emit(self, record: logging.LogRecord) -> None:
        if self.failure is None:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        import sys

        self.failure = sys.exc_info()[1]
        self.close()

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as error:
            self.failure = self.failure or error

    def close(self) -> None:
        try:
            super().close()
        except OSError as error:
            self.failure = self.failure or error
            self.stream = None

"""Errors raised by the DicomEdit engine.

Two kinds, as in DicomEdit: a script that cannot be parsed is refused before it touches any data
(syntax error); an error while running keeps the changes already made (runtime error).
"""

from __future__ import annotations

from typing import Any


class DicomEditError(Exception):
    """Base class so callers can catch every engine error at once."""


class DicomEditSyntaxError(DicomEditError):
    """The script is not valid DicomEdit 6 (or lacks a supported version line)."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        self.line = line
        self.column = column
        self.reason = message
        super().__init__(f"line {line}, column {column}: {message}")


class DicomEditRuntimeError(DicomEditError):
    """Evaluation failed; the dataset keeps every change made before the failing statement."""

    def __init__(self, message: str, line: int = 0, column: int = 0, result: Any = None) -> None:
        self.line = line
        self.column = column
        self.reason = message
        self.result = result
        super().__init__(f"line {line}, column {column}: {message}" if line else message)

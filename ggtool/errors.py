"""The one user-facing error type: what went wrong, and what to do about it."""

from __future__ import annotations


class GgtoolError(Exception):
    """A problem with the user's input or environment, rendered by the CLI as one line."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

"""The one user-facing error type: what went wrong, and what to do about it."""

from __future__ import annotations

# what `verify` needs beyond a plain install (its reference forwards): pyproject.toml's `verify` extra
VERIFY_HINT = "install the verify extra: pip install 'ggtool[verify]' (transformers and torch 2.13.0)"


class GgtoolError(Exception):
    """A problem with the user's input or environment, rendered by the CLI as one line."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

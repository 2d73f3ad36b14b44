"""One-line error reporting shared by every front end (no imports from the package: any layer may use it)."""

from __future__ import annotations

#: Exception types whose message speaks for itself; any other type is named in front of its message.
PLAIN = (ValueError, RuntimeError, OSError, FloatingPointError)


def error_line(e: BaseException) -> str:
    """The first line of an exception's message, prefixed with its type name unless it is one of :data:`PLAIN`
    (``"SafetensorError: invalid header"``); the type name alone for an empty message."""
    lines = str(e).strip().splitlines()
    text = lines[0].strip() if lines else ""
    if not text:
        return type(e).__name__
    return text if isinstance(e, PLAIN) else f"{type(e).__name__}: {text}"


def printable(text: str) -> str:
    """``text`` with every non-printable character (tab, newline, terminal escape sequences, ...) written as its
    Python escape (``\\t``, ``\\x1b``): a message quoting a user's file stays one line and cannot drive the
    terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)

"""How an error reads where a verb stops on it: one line on the terminal."""

from __future__ import annotations


def error_line(exc: BaseException) -> str:
    """An exception as one terminal line for a verb's error exit: its message with the
    lines joined, prefixed by its type unless that is a plain ``ValueError`` or one of our
    own errors, whose messages name the file, row and key (``SafetensorError: ...``).
    An error a DataLoader worker re-raised (``Caught X in DataLoader worker process 0.
    Original Traceback ...``) reads as the worker's own message."""
    lines = [part.strip() for part in str(exc).splitlines() if part.strip()]
    if lines and lines[0].startswith("Caught ") and any(x.startswith("Original Traceback") for x in lines):
        last = lines[-1]  # "module.Type: message" of the worker's exception
        lines = [last.split(": ", 1)[1] if ": " in last and "Error" in last.split(": ", 1)[0] else last]
    text = " ".join(lines)
    own = type(exc).__module__.startswith("fundusfm.")
    if text and (own or type(exc) is ValueError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

"""JSON objects on the command line: every ``--*-json`` option of the CLI takes either an
inline JSON object or the path of a JSON file (the Snakemake rules pass inline JSON)."""

from __future__ import annotations

import json
from pathlib import Path


def load_json_arg(value: str | dict) -> dict:
    """A CLI JSON argument: an inline JSON object or the path of a JSON file.

    Raises ValueError naming the value when it is neither, or not an object."""
    if isinstance(value, dict):
        return dict(value)
    text = value.strip()
    if not text.startswith("{") and Path(value).is_file():
        text = Path(value).read_text()
    try:
        out = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not a JSON object nor a JSON file: {value[:200]!r} ({e})") from None
    if not isinstance(out, dict):
        raise ValueError(f"expected a JSON object, got {type(out).__name__}: {value[:200]!r}")
    return out

"""Content digests of files: what "the same file" means wherever the study checks it
(release weights, init checkpoints and their conversions, the rules' parameters)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_MEMO: dict[tuple, str] = {}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file_memo(path: str | os.PathLike) -> str:
    """:func:`sha256_file`, computed once per process while the file stays the same file:
    the memo is keyed on device, inode, size, mtime *and* ctime, and ctime changes with
    every write (``cp -p`` restores the mtime, never the ctime)."""
    st = Path(path).stat()
    key = (os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _MEMO:
        _MEMO[key] = sha256_file(path)
    return _MEMO[key]

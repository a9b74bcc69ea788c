"""Content digests of files: what "the same file" means wherever the study checks it.

* SHA-256 (:func:`sha256_file`) where a digest is published or guards against a planted
  file: release weights, init checkpoints and their conversions, the rules' parameters;
* xxh3-128 (:func:`fast_digest_file`, ``xxhash``: several GB/s, ~10x SHA-256) where the
  study checks its own files for accidental change at every use: raw photographs (the QC
  cache is keyed on their content, not size and time stamp) and processed images (their
  digest in the QC and task tables is checked when training reads them).
"""

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


FAST_ALGORITHM = "xxh3-128"


class DigestMismatch(ValueError):
    """A file's content is not the one a table recorded (the message names the file, the
    table and how to rebuild it)."""


def fast_digest_bytes(data: bytes) -> str:
    """Hex xxh3-128 of ``data``."""
    import xxhash

    return xxhash.xxh3_128_hexdigest(data)


def fast_digest_file(path: str | os.PathLike, chunk: int = 4 << 20) -> str:
    """Hex xxh3-128 of a file's bytes."""
    import xxhash

    h = xxhash.xxh3_128()
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

"""Writing outputs: complete or absent, readable as the umask says, no leftovers.

Every output file of the package is written through :func:`atomic_write` (or
:func:`write_json` / :func:`write_text` / :func:`atomic_write_many` built on it):

* the content goes to a temporary sibling ``.<name>.tmp<pid>`` and is renamed over the
  target only once complete, so a reader (or Snakemake) never sees half a file;
* the file gets the permissions an ordinary ``open()`` would give it, ``0666`` minus the
  umask (some writers, ``safetensors`` and ``mkstemp``, create ``0600`` files that
  colleagues on a shared disk could not read);
* the temporary file is removed when the write fails or is interrupted (an exception,
  Ctrl-C, or SIGTERM once :func:`fundusfm.cli.main` turned it into ``SystemExit``), and a
  leftover of a process that was killed outright (SIGKILL) is removed by the next write
  into the same folder;
* a write the storage refuses (disk full, quota, a read-only folder, no permission, and
  torch's own wording of a short write) raises :class:`OutputError` naming the file and
  what to do, which every verb prints as one line (:func:`fundusfm.cli.main`).

Tables are written by :func:`write_csv` / :func:`csv_writer` only, which neutralise text
cells a spreadsheet would run as a formula (:func:`neutralise_cell`). Safetensors files
are written by :func:`write_safetensors`, whose header is the same bytes for the same
tensors and metadata (the library's own writer orders the metadata at random).
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

_TMP = ".{name}.tmp"

# errno values of a storage that refuses a write, and what to do about each
STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on the device: free space there or point the output elsewhere",
    errno.EDQUOT: "disk quota exceeded: free space or ask for a larger quota",
    errno.EFBIG: "file too large for this file system or process limit (ulimit -f)",
    errno.EROFS: "the folder is on a read-only file system: write the outputs elsewhere",
    errno.EACCES: "permission denied: check the folder's owner and mode (ls -ld), or write elsewhere",
    errno.EPERM: "operation not permitted: check the folder's owner and mode (ls -ld), or write elsewhere",
}


class OutputError(OSError):
    """The storage refused a write (disk full, quota, read-only, permission); the message
    names the file and what to do. An ``OSError``, so handlers of write failures still
    catch it."""

    def __str__(self) -> str:  # the message alone (OSError would add "[Errno N]" and the path again)
        return str(self.strerror)


def storage_error(exc: BaseException, path: str | os.PathLike | None = None, writing: bool = True
                  ) -> OutputError | None:
    """``exc`` as an :class:`OutputError` naming ``path`` (else the file the error names)
    when it is a storage refusal (:data:`STORAGE_ERRNOS`, or torch's "unexpected pos" /
    "PytorchStreamWriter failed" of a short write, checked against the free space), else
    ``None``. ``writing=False``: the error may be a read's (the message then says only
    the path and the cause)."""
    if isinstance(exc, OutputError):
        return exc
    where = path if path is not None else getattr(exc, "filename", None)
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        what = f"cannot write {where}" if writing else f"{where}"
        return OutputError(exc.errno, f"{what}: {STORAGE_ERRNOS[exc.errno]}", str(where))
    text = str(exc)
    # writers in other languages word the errno (safetensors: "No space left on device (os error 28)")
    for code in STORAGE_ERRNOS:
        if f"os error {code})" in text or os.strerror(code) in text:
            what = f"cannot write {where}" if writing else f"{where}"
            return OutputError(code, f"{what}: {STORAGE_ERRNOS[code]}", str(where))
    if isinstance(exc, RuntimeError) and ("unexpected pos" in text or "PytorchStreamWriter failed" in text
                                          or "inline_container" in text):
        folder = Path(where).parent if where else Path(".")
        if _free_bytes(folder) < 1 << 20:
            return OutputError(errno.ENOSPC, f"cannot write {where}: {STORAGE_ERRNOS[errno.ENOSPC]}", str(where))
        return OutputError(errno.EIO, f"cannot write {where}: the write stopped short ({text.splitlines()[0][:120]}); "
                                      "check the disk and its free space", str(where))
    return None


def _free_bytes(folder: Path) -> int:
    try:
        st = os.statvfs(folder)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def output_mode() -> int:
    """Permission bits of a new file under this process's umask (``0666 & ~umask``)."""
    umask = None
    try:  # Linux >= 4.7 reports it without changing it (os.umask() would, for every thread)
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
                    break
    except OSError:
        pass
    if umask is None:
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)$")
_swept: set[str] = set()  # folders this process already cleaned


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the ``.<name>.tmp<pid>`` files in ``folder`` of processes that no longer run
    (killed outright while writing). Done once per folder and process: a folder of many
    outputs (processed images) is listed once, not once per file."""
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _swept:
        return []
    _swept.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        m = _TEMPORARY.match(entry.name)
        if m and int(m[1]) != os.getpid() and not _pid_alive(int(m[1])):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


def temporary_path(path: str | os.PathLike) -> Path:
    """The temporary sibling this process writes ``path`` under."""
    path = Path(path)
    return path.with_name(_TMP.format(name=path.name) + str(os.getpid()))


def atomic_write_many(items: Sequence[tuple[str | os.PathLike, Callable[[Path], object]]]) -> None:
    """Write several files all or nothing: each ``write(tmp_path)`` first, then every rename.

    On any failure (or interruption) the temporary files are removed and no target is
    touched, unless the renames had started."""
    pending: list[tuple[Path, Path]] = []
    target = None
    try:
        for target, write in items:
            target = Path(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(target.parent)
            tmp = temporary_path(target)
            pending.append((tmp, target))
            write(tmp)
            os.chmod(tmp, output_mode())
        while pending:
            tmp, target = pending[0]
            os.replace(tmp, target)
            pending.pop(0)
    except Exception as exc:  # noqa: BLE001 - only storage refusals are reworded, the rest re-raised
        err = storage_error(exc, target)
        if err is None:
            raise
        raise err from exc
    finally:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp_path)``, then rename over ``path`` (see the module docstring)."""
    atomic_write_many([(path, write)])
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 2, sort_keys: bool = False,
               allow_nan: bool = True, default=None) -> Path:
    """``obj`` as JSON text (ending with a newline)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan, default=default) + "\n"
    return write_text(path, text)


# ----------------------------------------------------------------------------- tables

# A cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection":
# = + - @, and tab / carriage return, which some spreadsheets strip before the check).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Columns holding a relative path: neutralised as ``./<path>``, the same file to every reader.
PATH_COLUMNS = frozenset({"path", "image", "processed_path", "file", "filename"})


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def neutralise_cell(value, path_like: bool = False):
    """A text cell a spreadsheet would not run: a leading ``'`` (a spreadsheet shows the
    text after it), or ``./`` for a relative path (the same file); numbers such as
    ``-1.5`` and every non-text value are kept. Idempotent: a neutralised cell stays as it is."""
    if not isinstance(value, str) or not value.startswith(FORMULA_START) or _is_number(value):
        return value
    return "./" + value if path_like else "'" + value


def neutralise_frame(df):
    """``df`` with every text cell passed through :func:`neutralise_cell` (a copy when
    anything changes; the column names too)."""
    import pandas as pd

    out = None
    for col in df.columns:
        s = df[col]
        if not (pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s)):
            continue
        text = s.astype(object)
        hit = text.map(lambda v: isinstance(v, str) and v.startswith(FORMULA_START) and not _is_number(v))
        if hit.any():
            out = df.copy() if out is None else out
            path_like = str(col) in PATH_COLUMNS
            out[col] = text.where(~hit, text[hit].map(lambda v: neutralise_cell(v, path_like)))
    renamed = {c: neutralise_cell(c) for c in df.columns if isinstance(c, str) and neutralise_cell(c) != c}
    if renamed:
        out = (df.copy() if out is None else out).rename(columns=renamed)
    return df if out is None else out


def csv_writer(df, **to_csv) -> Callable[[Path], object]:
    """The write function of a table for :func:`atomic_write` / :func:`atomic_write_many`:
    ``df`` as CSV with formula cells neutralised (``to_csv`` keywords as pandas',
    ``index=False`` by default)."""
    to_csv.setdefault("index", False)
    safe = neutralise_frame(df)
    return lambda p: safe.to_csv(p, **to_csv)


def write_csv(path: str | os.PathLike, df, **to_csv) -> Path:
    """A DataFrame as CSV, atomically, formula cells neutralised (see :func:`csv_writer`)."""
    return atomic_write(path, csv_writer(df, **to_csv))


# ----------------------------------------------------------------------------- safetensors

def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file's bytes with a reproducible header: the library writes the
    tensors in a fixed order but its metadata map in random order, so the same tensors
    would hash differently between runs; the metadata is re-serialised with sorted keys."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """``tensors`` as a safetensors file, atomically, with a reproducible header
    (:func:`safetensors_bytes`): the same tensors and metadata give the same bytes."""
    data = safetensors_bytes(tensors, metadata)
    return atomic_write(path, lambda p: p.write_bytes(data))

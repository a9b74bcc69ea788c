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
  into the same folder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

_TMP = ".{name}.tmp"


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


def write_csv(path: str | os.PathLike, df, **to_csv) -> Path:
    """A DataFrame as CSV (``to_csv`` keywords as pandas', ``index=False`` by default)."""
    to_csv.setdefault("index", False)
    return atomic_write(path, lambda p: df.to_csv(p, **to_csv))

"""The resume checkpoint ``OUT/.resume/state.pt``: tensors and plain values only.

A results tree may come from a colleague, a shared disk or a restored backup, so the
resume state is never unpickled as arbitrary Python objects: it is written only with
tensors, ``dict`` (string keys), ``list``, ``tuple``, ``str``, ``int``, ``float``, ``bool``
and ``None``, and read back with ``torch.load(weights_only=True)``, which refuses
anything else without running it. A refused file raises :class:`ResumeError` naming it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

STATE_FILE = "state.pt"
# what a resume state must hold, and the type of each entry
REQUIRED = {"fingerprint": dict, "model": dict, "optimizer": dict, "epoch": int, "step": int}
_SCALARS = (str, int, float, bool, type(None))


class ResumeError(RuntimeError):
    """A resume state cannot be used; the message names the file and what to do."""


def plain_problem(obj, where: str = "state") -> str | None:
    """``None`` when ``obj`` holds tensors and plain values only, else where it does not."""
    if torch.is_tensor(obj) or isinstance(obj, _SCALARS):
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                return f"{where}: key {k!r} of type {type(k).__name__}"
            problem = plain_problem(v, f"{where}[{k!r}]")
            if problem:
                return problem
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            problem = plain_problem(v, f"{where}[{i}]")
            if problem:
                return problem
        return None
    return f"{where}: a {type(obj).__module__}.{type(obj).__qualname__}"


def save_state(state: dict, path: str | Path) -> None:
    """Write ``state`` (tensors and plain values only, else ``TypeError``) to ``path``."""
    problem = plain_problem(state)
    if problem:
        raise TypeError(f"resume state must hold tensors and plain values only ({problem})")
    torch.save(state, path)


def load_state(path: str | Path) -> dict:
    """Read a resume state written by :func:`save_state`; refuse anything else.

    ``weights_only=True`` makes torch's unpickler refuse every global beyond tensors and
    plain containers before it could be called, so a planted payload never runs.
    """
    path = Path(path)
    fix = f"delete {path.parent} to start this run afresh"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(exc)
        if "global" not in reason.lower():
            raise ResumeError(f"{path}: unreadable resume state (torch: {reason}); {fix}") from None
        raise ResumeError(f"{path}: refused: a resume state holds tensors and plain values only, this file "
                          f"holds other Python objects ({reason}; nothing of it was run); {fix}") from None
    except (EOFError, OSError, RuntimeError, ValueError) as exc:
        raise ResumeError(f"{path}: unreadable resume state ({type(exc).__name__}: {exc}); {fix}") from None
    if not isinstance(state, dict):
        raise ResumeError(f"{path}: a resume state is a dict, this file holds a {type(state).__name__}; {fix}")
    for key, kind in REQUIRED.items():
        if not isinstance(state.get(key), kind) or (kind is int and isinstance(state.get(key), bool)):
            raise ResumeError(f"{path}: key {key!r} missing or not a {kind.__name__}; {fix}")
    return state


def _unpickler_reason(exc: Exception) -> str:
    """The one informative clause of torch's weights-only refusal (e.g. ``Unsupported
    global: GLOBAL io.open``), without its advice to load the file unrestricted."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    text = " ".join(text.split())
    for stop in (" was not an allowed global", " Check the documentation", ". Please use"):
        text = text.split(stop, 1)[0]
    return text.strip(" .") or type(exc).__name__

"""The manifest contract: one row per image, paths inside the dataset root, harmonised labels.

``validate_manifest`` checks a manifest written by an adapter or by a user (adapter
``manifest``) and raises :class:`ManifestError` listing every problem with its file, row,
column and value, so one run shows everything to fix.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path, PurePosixPath

import pandas as pd

from fundusfm.data.vocab import LABELS, NUMERIC_LABELS, label_conflicts

REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", "path")
ID_COLUMNS: tuple[str, ...] = ("image_id", "path", "patient_id", "eye", "split", "dataset")
OPTIONAL_COLUMNS: tuple[str, ...] = ("source_label",)
EYES = ("L", "R", "U")
SPLITS = ("train", "val", "test", "")
# provenance columns adapters may carry so errors can point at the source file and row
PROVENANCE = ("_file", "_row", "_column")
MAX_LISTED = 25


class ManifestError(ValueError):
    """A manifest (or the dataset behind it) is not usable; ``problems`` lists each one.

    Each problem is a dict with ``file``, ``row``, ``column``, ``value`` and ``message``.
    """

    def __init__(self, dataset: str, problems: list[dict]):
        self.dataset = dataset
        self.problems = problems
        lines = [f"dataset {dataset!r}: {len(problems)} problem(s)"]
        for p in problems[:MAX_LISTED]:
            lines.append("  " + format_problem(p))
        if len(problems) > MAX_LISTED:
            lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
        super().__init__("\n".join(lines))


def format_problem(p: dict) -> str:
    """One problem as ``file:row [column=value] message``."""
    where = f"{p.get('file', '?')}"
    if p.get("row") not in (None, ""):
        where += f" row {p['row']}"
    if p.get("column"):
        where += f" column {p['column']!r}"
    if p.get("value") not in (None, ""):
        where += f" value {p['value']!r}"
    return f"{where}: {p.get('message', '')}"


def problem(df: pd.DataFrame, i: int, column: str, value, message: str, default_file: str) -> dict:
    """A problem dict for positional row ``i``, pointing at the source file/row when known."""
    file = default_file
    row = i + 2  # spreadsheet line: header is line 1
    if "_file" in df.columns and pd.notna(df["_file"].iat[i]):
        file = str(df["_file"].iat[i])
    if "_row" in df.columns and pd.notna(df["_row"].iat[i]):
        row = df["_row"].iat[i]
    src = df.attrs.get("source_columns", {}).get(column)
    col = f"{column} (from {src!r})" if src else column
    return {"file": file, "row": row if isinstance(row, str) else int(row), "column": col,
            "value": "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value),
            "message": message}


def path_escapes(path: str) -> bool:
    """True when a manifest path is absolute or leaves the dataset root (``..``)."""
    if not path or path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        return True
    norm = os.path.normpath(path.replace("\\", "/"))
    return norm == ".." or norm.startswith("../") or PurePosixPath(norm).is_absolute()


def _inside(real_root: str, real_path: str) -> bool:
    """True when the resolved ``real_path`` lies under the resolved ``real_root``."""
    return real_path == real_root or real_path.startswith(real_root.rstrip(os.sep) + os.sep)


def _as_label(value, column: str):
    """Coerce one cell to its vocabulary value; returns (value, ok)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return pd.NA, True
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return pd.NA, True
    allowed = LABELS[column].values
    if column in NUMERIC_LABELS:
        try:
            f = float(value)
        except (TypeError, ValueError):
            return value, False
        # "NaN" / "inf" in a label column: a bad value to report, not an integer conversion crash
        if not math.isfinite(f) or f != int(f) or int(f) not in allowed:
            return value, False
        return int(f), True
    v = str(value).strip().lower()
    return (v, True) if v in allowed else (value, False)


def _nonfinite(value) -> bool:
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def validate_manifest(df: pd.DataFrame, dataset: str, root: str | Path, check_files: bool = True,
                      drop_provenance: bool = True) -> pd.DataFrame:
    """Check a manifest against the contract and return it normalised.

    Raises :class:`ManifestError` for missing required columns, unknown columns, empty or
    duplicate ``image_id``, ids unusable as file names, paths escaping ``root``, unknown
    eye / split / label values, contradictory normal/abnormal labels and (when
    ``check_files``) image files that do not exist. Missing ``patient_id`` falls back to
    ``image_id``, missing ``eye`` to ``U``, missing ``split`` to empty, ``dataset`` is set.
    Provenance columns (``_file``, ``_row``) are used for messages and dropped unless
    ``drop_provenance`` is false.
    """
    root = Path(root)
    real_root = os.path.realpath(root)
    src = f"{dataset} manifest"
    # header problems point at the CSV itself when it came from a file (adapter `manifest`)
    header_file = src
    if "_file" in df.columns and len(df) and pd.notna(df["_file"].iat[0]) and str(df["_file"].iat[0]):
        header_file = str(df["_file"].iat[0])
    problems: list[dict] = []
    known = set(ID_COLUMNS) | set(OPTIONAL_COLUMNS) | set(LABELS) | set(PROVENANCE)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(dataset, [{"file": header_file, "row": 1, "column": c, "value": "",
                                       "message": "required column missing (header row)"
                                       + (f"; rename the header's {hit!r} to {c!r}"
                                          if (hit := closest(c, [str(x) for x in df.columns])) else "")}
                                      for c in missing])
    for c in df.columns:
        if c not in known:
            problems.append({"file": header_file, "row": 1, "column": str(c), "value": "",
                             "message": "unknown column"
                                        + (f" (did you mean {hit!r}?)" if (hit := closest(str(c), sorted(known - set(PROVENANCE)))) else "")
                                        + f"; allowed: {', '.join(ID_COLUMNS + OPTIONAL_COLUMNS)} "
                                        f"and labels {', '.join(LABELS)}"})
    out = df.reset_index(drop=True).copy()
    out.attrs = dict(df.attrs)

    def text(col: str, default: str = "") -> pd.Series:
        if col not in out.columns:
            return pd.Series([default] * len(out), dtype=object)
        return out[col].map(lambda v: default if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v).strip())

    out["image_id"] = text("image_id")
    out["path"] = text("path").str.replace("\\", "/", regex=False)
    pid = text("patient_id")
    out["patient_id"] = pid.where(pid != "", out["image_id"])
    out["eye"] = text("eye", "U").replace("", "U").str.upper()
    out["split"] = text("split").str.lower()
    out["dataset"] = dataset

    seen: dict[str, int] = {}
    for i, iid in enumerate(out["image_id"]):
        if iid == "":
            problems.append(problem(out, i, "image_id", "", "empty image_id", src))
            continue
        if "/" in iid or "\\" in iid or iid in {".", ".."}:
            problems.append(problem(out, i, "image_id", iid, "image_id must be usable as a file name", src))
        if iid in seen:
            first = problem(out, seen[iid], "image_id", iid, "", src)
            problems.append(problem(out, i, "image_id", iid,
                                    f"duplicate image_id (first at {first['file']} row {first['row']})", src))
        else:
            seen[iid] = i
    for i, p in enumerate(out["path"]):
        if p == "":
            problems.append(problem(out, i, "path", "", "empty path", src))
        elif path_escapes(p):
            problems.append(problem(out, i, "path", p, f"path escapes the dataset root {root}", src))
        elif check_files and not (root / p).is_file():
            problems.append(problem(out, i, "path", p, f"image file missing under {root} "
                                    "(fix the path, or list the image in `exclude:` / set `on_missing: exclude`)", src))
        elif check_files and not _inside(real_root, os.path.realpath(root / p)):
            problems.append(problem(out, i, "path", p, f"resolves to {os.path.realpath(root / p)}, outside the dataset "
                                    f"root {real_root} (a symlink out of the root); copy the file in, or point `root:` "
                                    "at a folder that holds it", src))
    for i, e in enumerate(out["eye"]):
        if e not in EYES:
            problems.append(problem(out, i, "eye", e, "eye must be L, R or U", src))
    for i, s in enumerate(out["split"]):
        if s not in SPLITS:
            problems.append(problem(out, i, "split", s, "split must be train, val, test or empty", src))
    for col in [c for c in out.columns if c in LABELS]:
        coerced = []
        for i, v in enumerate(out[col]):
            value, ok = _as_label(v, col)
            if not ok:
                nonfinite = _nonfinite(v)
                problems.append(problem(out, i, col, v, (f"{v!s} is not a label value" if nonfinite else
                                                         f"not an allowed {col} value") + f" {list(LABELS[col].values)}"
                                        + ("; leave the cell empty for unknown" if nonfinite else ""), src))
                value = pd.NA
            coerced.append(value)
        out[col] = pd.array(coerced, dtype="Int64" if col in NUMERIC_LABELS else object)
    if not problems:
        for i, reason in label_conflicts(out):
            problems.append(problem(out, i, "normal/abnormal", "", reason, src))
    if problems:
        raise ManifestError(dataset, problems)
    if drop_provenance:
        out = out.drop(columns=[c for c in PROVENANCE if c in out.columns])
    return order_columns(out)


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate ``name`` was probably meant to be (same ignoring case, '_', '-' and spaces,
    else the closest spelling), or None. For "did you mean" hints on column and key names."""
    def norm(t: str) -> str:
        return re.sub(r"[\s_\-]+", "", str(t)).lower()

    others = [c for c in candidates if c != name]
    same = [c for c in others if norm(c) == norm(name)]
    if same:
        return same[0]
    hits = difflib.get_close_matches(name, others, n=1, cutoff=0.6)
    return hits[0] if hits else None


def order_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Contract column order: id columns, labels in vocabulary order, then source_label."""
    cols = [c for c in ID_COLUMNS if c in df.columns]
    cols += [c for c in LABELS if c in df.columns]
    cols += [c for c in df.columns if c not in cols]
    return df[cols]


def read_manifest_csv(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV keeping ids as strings (``007`` stays ``007``)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.columns = [str(c).strip() for c in df.columns]
    df["_file"] = str(path)
    df["_row"] = range(2, len(df) + 2)
    return df

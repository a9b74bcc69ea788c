"""Shared machinery of the dataset adapters: the adapter record, the ingest context
(root, config, file index, report) and tolerant readers for label files.

An adapter is a function ``read(ctx) -> DataFrame`` returning one row per labelled
image with ``image_id``, ``path`` (relative to the root), ``patient_id``, ``eye``,
``split``, harmonised label columns, ``source_label`` and provenance ``_file`` /
``_row`` (so every later error can name the source file and row). Everything common
(exclusions, missing files, unlabelled images, normal/abnormal, validation) happens
once in :func:`fundusfm.data.adapters.read_dataset`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import pandas as pd

from fundusfm.data.manifest import ManifestError
from fundusfm.imagetypes import IMAGE_SUFFIXES

# the one list of photograph suffixes (fundusfm.imagetypes), shared with preprocess and predict
IMAGE_EXTS = frozenset(IMAGE_SUFFIXES)


@dataclass(frozen=True)
class Opt:
    """One adapter option: its type (checked before any job runs), what it does, allowed values.

    ``kind`` is one of ``bool``, ``str``, ``path``, ``sheet`` (sheet name or 0-based index),
    ``row`` (a 1-based line number), ``patterns`` (a glob or a list of globs),
    ``fraction`` (a number in [0, 1]), ``choice`` (one of ``choices``), ``ids_or_path`` (a list
    of image ids, or a file of them), ``class_map`` (``{folder: {label: value}}``), ``label_map``
    (``{label: column}``), ``value_map`` (``{label: {source value: value}}``), ``split_map``
    (``{source value: train|val|test|''}``), ``mapping`` (any mapping).
    """

    kind: str
    doc: str
    choices: tuple = ()


def _typename(value) -> str:
    return "a boolean" if isinstance(value, bool) else f"{type(value).__name__} {value!r}"[:80]


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def option_type_problem(value, opt: Opt) -> str | None:
    """Why ``value`` is not a valid value of an option declared as ``opt`` (None when it is)."""
    from fundusfm.data.vocab import LABELS

    k = opt.kind
    if k == "bool":
        # a YAML string "no" / "false" is truthy in Python: refuse it rather than read it as true
        return None if isinstance(value, bool) else f"must be true or false (a YAML boolean), got {_typename(value)}"
    if k in ("str", "path"):
        if not isinstance(value, str) or not value.strip():
            return f"must be a non-empty {'path' if k == 'path' else 'string'}, got {_typename(value)}"
        return None
    if k == "sheet":
        if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, int) and value < 0):
            return f"must be a sheet name or a 0-based sheet index, got {_typename(value)}"
        return None
    if k == "row":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"must be a line number (1 = the first line), got {_typename(value)}"
        return None
    if k == "patterns":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or any(not isinstance(v, str) or not v.strip() for v in items):
            return f"must be a glob (e.g. \"images/**/*.jpg\") or a list of globs, got {_typename(value)}"
        for v in items:  # globs list files of the dataset root, never elsewhere
            parts = v.replace("\\", "/").split("/")
            if v.startswith(("/", "~")) or (len(v) > 1 and v[1] == ":") or ".." in parts:
                return (f"glob {v!r} must be relative to the dataset root and stay inside it (no leading '/', '~' "
                        "or drive, no '..')")
        return None
    if k == "fraction":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            return f"must be a number between 0 and 1, got {_typename(value)}"
        return None
    if k == "choice":
        return None if isinstance(value, str) and value in opt.choices else (
            f"must be one of {', '.join(repr(c) for c in opt.choices)}, got {_typename(value)}")
    if k == "ids_or_path":
        if isinstance(value, str):
            return None if value.strip() else "must be a list of image ids or the path of a file listing them"
        if isinstance(value, list):
            bad = [v for v in value if isinstance(v, bool) or not isinstance(v, (str, int))]
            return None if not bad else f"list entries must be image ids (strings), got {_typename(bad[0])}"
        return f"must be a list of image ids or the path of a file listing them, got {_typename(value)}"
    if not isinstance(value, dict):
        shape = {"class_map": "{folder: {label: value}}", "label_map": "{label: column}",
                 "value_map": "{label: {source value: value}}", "split_map": "{source value: train|val|test}",
                 "mapping": "a mapping"}.get(k, "a mapping")
        return f"must be a mapping {shape}, got {_typename(value)}"
    if k == "class_map":
        for folder, labels in value.items():
            if not isinstance(labels, dict):
                return f"entry {folder!r} must be a mapping {{label: value}}, got {_typename(labels)}"
            for label, v in labels.items():
                if label != "note" and label not in LABELS:
                    return f"entry {folder!r}: {label!r} is not a harmonised label (known: {', '.join(LABELS)})"
                if not _is_scalar(v):
                    return f"entry {folder!r}: value of {label!r} must be a single value, got {_typename(v)}"
    elif k == "label_map":
        for label, col in value.items():
            if label not in LABELS:
                return f"{label!r} is not a harmonised label (known: {', '.join(LABELS)})"
            if not isinstance(col, str) or not col:
                return f"entry {label!r} must name a column (a string), got {_typename(col)}"
    elif k == "value_map":
        for label, vm in value.items():
            if not isinstance(vm, dict):
                return f"entry {label!r} must be a mapping {{source value: value}}, got {_typename(vm)}"
            bad = [v for v in vm.values() if not _is_scalar(v)]
            if bad:
                return f"entry {label!r}: values must be single values, got {_typename(bad[0])}"
    elif k == "split_map":
        for src, split in value.items():
            if split not in ("train", "val", "test", ""):
                return f"entry {src!r} must map to train, val, test or '' , got {_typename(split)}"
    return None


@dataclass(frozen=True)
class Adapter:
    """One dataset family: how to read it and how its labels map to the vocabulary."""

    name: str
    read: Callable[["Context"], pd.DataFrame]
    summary: str
    layout: str
    # source label -> harmonised labels; written into docs/datasets.md
    mapping: dict = field(default_factory=dict)
    # labels list every disease found, so all-negative means normal (see vocab.harmonise_abnormal)
    exhaustive: bool = False
    # regex on relative paths: every image there should have a label (others are reported)
    labelled_dirs: str | None = None
    # option name -> Opt: the adapter's own keys (besides the common ones), type-checked by the
    # workflow's config check and by read_dataset before anything is read
    options: dict = field(default_factory=dict)


class Report:
    """What ingest found besides the manifest: unmapped labels, exclusions, unlabelled images."""

    def __init__(self, dataset: str, adapter: str, root: Path):
        self.dataset, self.adapter, self.root = dataset, adapter, root
        self.unmapped: list[dict] = []
        self.excluded: list[dict] = []
        self.unlabelled_images: list[str] = []
        self.warnings: list[str] = []
        self.errors: list[dict] = []

    def unmapped_label(self, file, row, column, value, message: str = "no entry in the adapter's label mapping; left unknown",
                       labels=None) -> None:
        """A source label with no harmonised meaning: reported, the label stays unknown.

        ``labels``: the harmonised columns this value left unknown (None: every label of the
        row). Ingest fails when unknown values blank more than ``max_unknown_fraction`` of a
        label column (see :func:`fundusfm.data.adapters.read_dataset`).
        """
        self.unmapped.append({"file": str(file), "row": row, "column": column, "value": str(value), "message": message,
                              "labels": None if labels is None else sorted(labels)})

    def error(self, file, row, column, value, message: str) -> None:
        """Bad input; collected so one run lists every problem, raised before the manifest is written."""
        self.errors.append({"file": str(file), "row": row, "column": column, "value": "" if value is None else str(value),
                            "message": message})

    def to_dict(self, manifest: pd.DataFrame | None = None) -> dict:
        out = {"dataset": self.dataset, "adapter": self.adapter, "root": str(self.root)}
        if manifest is not None:
            out["n_images"] = int(len(manifest))
            out["n_patients"] = int(manifest["patient_id"].nunique()) if "patient_id" in manifest else None
            # False: the dataset gives no patient ids, so patient = image (splits and CIs are image-level)
            out["patient_ids_from_dataset"] = bool("patient_id" in manifest and len(manifest)
                                                   and (manifest["patient_id"] != manifest["image_id"]).any())
            out["splits"] = {str(k) or "(none)": int(v) for k, v in manifest["split"].value_counts().items()} if "split" in manifest else {}
            labels = {}
            from fundusfm.data.vocab import LABELS

            for c in [c for c in LABELS if c in manifest.columns]:
                counts = manifest[c].astype(object).where(manifest[c].notna(), "unknown").astype(str).value_counts()
                labels[c] = {str(k): int(v) for k, v in sorted(counts.items())}
            out["labels"] = labels
        unmapped_summary: dict[str, int] = {}
        for u in self.unmapped:
            unmapped_summary[u["value"]] = unmapped_summary.get(u["value"], 0) + 1
        out.update({"unmapped_labels": unmapped_summary, "unmapped": self.unmapped,
                    "unknown_values": unknown_value_counts(self.unmapped, list(out.get("labels", {}))),
                    "excluded": self.excluded, "unlabelled_images": self.unlabelled_images, "warnings": self.warnings})
        return out


def unknown_value_counts(unmapped: list[dict], columns: list[str]) -> dict[str, dict[str, int]]:
    """Per harmonised label column: source value -> number of images it left unknown.

    An entry names the columns it blanked (``labels``; None means every column); images are
    counted once per (file, row, source column), the unit a source value labels.
    """
    seen: dict[str, dict[str, set]] = {}
    for u in unmapped:
        cols = u.get("labels")
        for c in columns if cols is None else [c for c in cols if c in columns]:
            seen.setdefault(c, {}).setdefault(u["value"], set()).add((u["file"], str(u["row"]), u["column"]))
    return {c: {v: len(k) for v, k in sorted(vals.items())} for c, vals in sorted(seen.items())}


class FileIndex:
    """Every file under a root, walked once; images looked up by stem, case-insensitively.

    Real distributions disagree with their own label files on extension case
    (``IMG0001.jpg`` vs ``IMG0001.JPG``) and nest folders differently per download
    mirror, so lookups go by stem with an optional folder hint.
    """

    def __init__(self, root: Path):
        self.root = root
        self.files: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            for f in sorted(filenames):
                if f.startswith("."):
                    continue
                self.files.append(f if rel == "." else f"{Path(rel).as_posix()}/{f}")
        self.images = [f for f in self.files if Path(f).suffix.lower() in IMAGE_EXTS]
        self.by_stem: dict[str, list[str]] = {}
        for f in self.images:
            self.by_stem.setdefault(Path(f).stem.lower(), []).append(f)

    def find(self, name: str, hint: str | None = None) -> str | None:
        """Relative path of the image called ``name`` (extension optional, any case).

        ``hint`` is a regex on the folder part, used when the same stem exists in
        several folders (e.g. IDRiD training and testing both have ``IDRiD_001``).
        Returns None when absent; raises LookupError naming the candidates when ambiguous.
        """
        base = name.replace("\\", "/").rsplit("/", 1)[-1]
        stem = Path(base).stem if Path(base).suffix.lower() in IMAGE_EXTS else base
        cands = self.by_stem.get(stem.strip().lower(), [])
        if hint is not None:
            cands = [c for c in cands if re.search(hint, c.rsplit("/", 1)[0] if "/" in c else "", re.I)]
        if len(cands) > 1:
            exact = [c for c in cands if c.rsplit("/", 1)[-1] == base]
            if len(exact) == 1:
                return exact[0]
            raise LookupError(f"{name!r} matches several files: {', '.join(cands[:5])}")
        return cands[0] if cands else None

    def has_folder(self, hint: str) -> bool:
        """Whether any image lies in a folder matching ``hint`` (the regex of :meth:`find`)."""
        cache = self.__dict__.setdefault("_folder_hits", {})
        if hint not in cache:
            cache[hint] = any(re.search(hint, f.rsplit("/", 1)[0], re.I) for f in self.images if "/" in f)
        return cache[hint]

    def match(self, pattern: str) -> list[str]:
        """All files whose relative path matches ``pattern`` (regex, case-insensitive)."""
        rx = re.compile(pattern, re.I)
        return [f for f in self.files if rx.search(f)]


@dataclass
class Context:
    """Everything an adapter needs: dataset name, root, its config entry and the report."""

    name: str
    root: Path
    cfg: dict
    report: Report

    @cached_property
    def index(self) -> FileIndex:
        return FileIndex(self.root)

    def option(self, key: str, default=None):
        return self.cfg.get(key, default)

    def locate(self, name: str, hint: str | None, expected: str, file, row, anywhere: bool = False) -> str:
        """Path of an image named in a label file; ``expected`` when absent (reported later as missing).

        ``anywhere``: when the download has no folder matching the hint at all (a user's own
        re-packaging), accept a unique match elsewhere (for datasets whose image names are
        unique, like EyePACS ``10_left``). When the hinted folder exists, an image absent from
        it is missing: never a same-named copy from another folder (ODIR's Kaggle download has
        ``preprocessed_images/`` beside ``Training Images/``).
        """
        try:
            found = self.index.find(name, hint)
            if found is None and anywhere and hint is not None and not self.index.has_folder(hint):
                found = self.index.find(name, None)
        except LookupError as e:
            self.report.error(file, row, "image", name, str(e))
            return expected
        return found if found is not None else expected

    def label_file(self, key: str, pattern: str, what: str, required: bool = True) -> Path | None:
        """The label file given as ``cfg[key]`` (relative to root) or the one file matching ``pattern``."""
        given = self.cfg.get(key)
        if given:
            p = Path(given)
            p = p if p.is_absolute() else self.root / p
            if not p.is_file():
                raise ManifestError(self.name, [{"file": str(p), "row": "", "column": key, "value": str(given),
                                                 "message": f"{what} not found"}])
            return p
        hits = [f for f in self.index.match(pattern) if Path(f).suffix.lower() not in IMAGE_EXTS]
        if len(hits) == 1:
            return self.root / hits[0]
        if not hits and not required:
            return None
        msg = (f"no {what} found under the root (looked for /{pattern}/); set `{key}:` in the config"
               if not hits else f"several candidates for the {what}: {', '.join(hits)}; set `{key}:` in the config")
        raise ManifestError(self.name, [{"file": str(self.root), "row": "", "column": key, "value": "", "message": msg}])


def sniff_delimiter(path: Path, skip: int = 0) -> str:
    """The field separator of a text table: the most frequent of ``,`` ``;`` tab in its header
    line (the first line after ``skip`` title lines).

    Messidor-2's ``messidor-2.csv`` is ``;``-separated (``left;right``); read with commas,
    every row would be one field and every image its own patient.
    """
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            for _ in range(skip):
                f.readline()
            first = f.readline()
    except OSError:
        return ","
    counts = {d: first.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


def read_table(path: Path, dataset: str, header_row: int = 0, sheet=0, sep: str | None = None) -> pd.DataFrame:
    """Read a CSV or spreadsheet as strings with clean column names and provenance.

    Column names are stripped (IDRiD's ``'Risk of macular edema '``), empty ``Unnamed``
    columns and all-empty rows (spreadsheet padding) dropped; ``_file`` and ``_row`` (the
    line number a user sees in a spreadsheet program) are added. Text files are split on
    ``sep`` (default: :func:`sniff_delimiter`). Unreadable files raise
    :class:`ManifestError` naming the file.
    """
    try:
        if path.suffix.lower() in {".xlsx", ".xlsm", ".xls"}:
            raw = pd.read_excel(path, sheet_name=sheet, header=None, dtype=str)
        else:
            # title lines above the header have fewer fields than the table: skip them here
            # and pad back, so `_row` stays the line a user sees
            raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, encoding="utf-8-sig",
                              skip_blank_lines=False, skiprows=header_row, sep=sep or sniff_delimiter(path, header_row))
            if header_row:
                pad = pd.DataFrame([[""] * raw.shape[1]] * header_row, columns=raw.columns)
                raw = pd.concat([pad, raw], ignore_index=True)
    except Exception as e:  # any parser / zip / encoding error: the file is not usable as given
        raise ManifestError(dataset, [{"file": str(path), "row": "", "column": "", "value": "",
                                       "message": f"unreadable label file ({type(e).__name__}: {e})"}]) from e
    if len(raw) <= header_row:
        raise ManifestError(dataset, [{"file": str(path), "row": header_row + 1, "column": "", "value": "",
                                       "message": "label file has no header row"}])
    raw = raw.map(lambda v: "" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v).strip())
    header = [str(c).strip() for c in raw.iloc[header_row]]
    body = raw.iloc[header_row + 1:].copy()
    body.columns = [h if h else f"Unnamed: {i}" for i, h in enumerate(header)]
    body["_row"] = [header_row + 2 + i for i in range(len(body))]
    keep = [c for c in body.columns if not (c.startswith("Unnamed: ") and (body[c] == "").all())]
    body = body[keep]
    data_cols = [c for c in body.columns if c != "_row"]
    body = body[~(body[data_cols] == "").all(axis=1)]
    body["_file"] = str(path)
    return body.reset_index(drop=True)


def require_columns(df: pd.DataFrame, columns: list[str], path: Path, dataset: str) -> None:
    """Raise naming the file and the columns it lacks (and those it has)."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        have = [c for c in df.columns if not c.startswith("_")]
        raise ManifestError(dataset, [{"file": str(path), "row": 1, "column": c, "value": "",
                                       "message": f"column missing; the file has {have}"} for c in missing])


def find_column(df: pd.DataFrame, *candidates: str) -> str | None:
    """First column whose name matches a candidate, ignoring case, spaces and underscores."""
    norm = {re.sub(r"[\s_]+", "", c).lower(): c for c in df.columns}
    for cand in candidates:
        hit = norm.get(re.sub(r"[\s_]+", "", cand).lower())
        if hit is not None:
            return hit
    return None


def parse_eye(text: str) -> str:
    """``left``/``l``/``OS`` -> L, ``right``/``r``/``OD`` -> R, anything else U."""
    t = str(text).strip().lower()
    if t in {"l", "left", "os", "left eye"}:
        return "L"
    if t in {"r", "right", "od", "right eye"}:
        return "R"
    return "U"


def int_or_raw(value: str):
    """``'2'``/``'2.0'`` -> 2; empty -> None; anything else returned as is (validation reports it)."""
    if value is None or str(value).strip() == "":
        return None
    try:
        f = float(value)
    except ValueError:
        return value
    # NaN / inf stay raw, so validation names the file, row and column instead of a traceback
    return int(f) if math.isfinite(f) and f == int(f) else value


def rows(records: list[dict], source_columns: dict | None = None) -> pd.DataFrame:
    """Manifest rows as a frame, remembering which source column each label came from."""
    df = pd.DataFrame.from_records(records)
    df.attrs["source_columns"] = dict(source_columns or {})
    return df

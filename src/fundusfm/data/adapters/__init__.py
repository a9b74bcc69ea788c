"""Dataset adapters: each public dataset, as distributed, into the manifest contract.

``read_dataset(name, cfg)`` is the one entry point: ``cfg`` is the dataset's config entry
(``adapter``, ``root`` and adapter options). Common options handled here for every adapter:

- ``exclude``: image ids to drop on purpose (listed in the report with reason ``config exclude``);
- ``on_missing``: ``error`` (default) or ``exclude`` for images a labels file lists but the disk lacks;
- ``on_unlabelled``: ``report`` (default) or ``error`` for images on disk that no label covers;
- ``exhaustive``: override whether all-negative disease labels mean ``normal`` (see vocab);
- ``on_quality_reject``: ``exclude`` or ``keep`` images whose grader ``quality`` is ``reject``
  (ungradable). The default excludes them for a user's own data (``csv``, ``manifest``) and keeps
  them for the public adapters, whose quality grades are labels of their own (EyeQ, Messidor-2);
- ``preprocess``: per-dataset ``max_reject_fraction`` / ``thresholds`` (read by the workflow's
  preprocess rule, not by ingest).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import pandas as pd

from fundusfm.data.adapters import aptos, deepdrid, eyepacs, folders, generic, idrid, messidor, odir, papila, refuge, rfmid
from fundusfm.data.adapters.base import Adapter, Context, Report
from fundusfm.data.manifest import ManifestError, closest, order_columns, path_escapes, validate_manifest
from fundusfm.data.vocab import DISEASE_COLUMNS, harmonise_abnormal

log = logging.getLogger(__name__)

ADAPTERS: dict[str, Adapter] = {a.name: a for a in [
    aptos.ADAPTER, eyepacs.ADAPTER, eyepacs.EYEQ, idrid.ADAPTER, messidor.ADAPTER, odir.ADAPTER, rfmid.ADAPTER,
    papila.ADAPTER, folders.JSIEC, folders.GLAUCOMA_FUNDUS, refuge.ADAPTER, deepdrid.ADAPTER, folders.RETFOUND,
    generic.CSV, folders.IMAGEFOLDER, generic.MANIFEST,
]}
# other spellings users will type
ALIASES = {"aptos": "aptos2019", "kaggle_dr": "eyepacs", "kaggle_dr2015": "eyepacs", "messidor": "messidor2",
           "messidor-2": "messidor2", "odir": "odir5k", "odir-5k": "odir5k", "glaucoma-fundus": "glaucoma_fundus",
           "retfound_benchmark": "retfound"}
COMMON_OPTIONS = {"adapter", "root", "exclude", "on_missing", "on_unlabelled", "exhaustive", "on_quality_reject",
                  "preprocess"}
# Keys each adapter reads besides COMMON_OPTIONS. Any other key in a dataset entry is a typo
# (`image_column` for `image_col`) that would otherwise be ignored without a word.
ADAPTER_OPTIONS: dict[str, frozenset[str]] = {
    "aptos2019": frozenset({"labels_file", "include_unlabelled", "test_file"}),
    "eyepacs": frozenset({"labels_file", "test_labels_file"}),
    "eyeq": frozenset({"labels_file", "test_labels_file"}),
    "idrid": frozenset({"labels_file", "test_labels_file"}),
    "messidor2": frozenset({"labels_file", "pairs_file"}),
    "odir5k": frozenset({"labels_file", "sheet", "split"}),
    "rfmid": frozenset({"labels_file", "val_labels_file", "test_labels_file"}),
    "papila": frozenset({"od_file", "os_file"}),
    "jsiec": frozenset({"class_map"}),
    "glaucoma_fundus": frozenset({"class_map"}),
    "refuge": frozenset({"val_labels_file", "test_labels_file"}),
    "deepdrid": frozenset({"labels_file", "val_labels_file"}),
    "retfound": frozenset({"class_map"}),
    "csv": frozenset({"labels_file", "image_col", "patient_col", "eye_col", "split_col", "split_map", "label_map",
                      "value_map", "path_template", "sheet", "header_row", "id_template", "date_columns", "eyes",
                      "quality_col", "quality_map", "image_glob", "patient_template"}),
    "imagefolder": frozenset({"class_map", "split_dirs"}),
    "manifest": frozenset({"path"}),
    "synth": frozenset({"synth"}),
}


def get_adapter(name: str) -> Adapter:
    """The adapter registered as ``name`` (or a known alias); KeyError lists the available ones."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in ADAPTERS:
        raise KeyError(f"unknown adapter {name!r}; available: {', '.join(sorted(ADAPTERS))}, synth")
    return ADAPTERS[key]


def option_problems(name: str, cfg: dict) -> list[dict]:
    """Problems with the keys of dataset ``name``'s config entry, before anything is read.

    An unknown adapter, or a key that adapter does not read (with the closest valid key),
    each as a problem dict (``file`` ``config``, ``column`` ``datasets.<name>.<key>``).
    The workflow's config check and ``read_dataset`` both use it.
    """
    cfg = cfg or {}
    where = f"datasets.{name}"
    adapter_name = str(cfg.get("adapter", ""))
    key = "synth" if adapter_name.lower() == "synth" else ALIASES.get(adapter_name.lower(), adapter_name.lower())
    if key not in ADAPTER_OPTIONS:
        hint = closest(adapter_name, list(ADAPTER_OPTIONS))
        return [{"file": "config", "row": "", "column": f"{where}.adapter", "value": adapter_name,
                 "message": "unknown adapter" + (f" (did you mean {hint!r}?)" if hint else "")
                            + f"; available: {', '.join(sorted(ADAPTER_OPTIONS))}"}]
    valid = sorted(COMMON_OPTIONS | ADAPTER_OPTIONS[key])
    problems = []
    for k in cfg:
        if k not in COMMON_OPTIONS and k not in ADAPTER_OPTIONS[key]:
            hint = closest(str(k), valid)
            problems.append({"file": "config", "row": "", "column": f"{where}.{k}", "value": "",
                             "message": f"not an option of adapter {key!r}" + (f" (did you mean {hint!r}?)" if hint else "")
                                        + f"; its options: {', '.join(valid)}"})
    if key == "csv" and cfg.get("on_unlabelled") == "error" and not cfg.get("image_glob"):
        # without the files it should cover, no image can be found unlisted: say so, never pass silently
        problems.append({"file": "config", "row": "", "column": f"{where}.on_unlabelled", "value": "error",
                         "message": "the csv adapter needs `image_glob:` (e.g. \"images/**/*.jpg\") to know which "
                                    "images on disk should have a row"})
    if key == "csv":
        # a value_map for a label that label_map does not read would never apply
        label_map = cfg.get("label_map") or {}
        for label in (cfg.get("value_map") or {}):
            if label not in label_map:
                problems.append({"file": "config", "row": "", "column": f"{where}.value_map.{label}", "value": "",
                                 "message": f"no label_map entry for {label!r}, so this value_map is never used"})
    return problems


def _read_synth(name: str, root: Path) -> pd.DataFrame:
    # imported lazily: the synth package is optional for real-data users
    mod = importlib.import_module("fundusfm.synth.adapter")
    try:
        out = mod.read_manifest(root, name)
    except (FileNotFoundError, ValueError) as e:  # its messages already name file, line and column
        raise ManifestError(name, [{"file": str(root / "labels.csv"), "row": "", "column": "", "value": "",
                                    "message": str(e)}]) from e
    return out[0] if isinstance(out, tuple) else out


def _exclude_list(cfg: dict, root: Path) -> list[str]:
    """``exclude:`` as a list of ids, or a path to a CSV/text file with an ``image_id`` column / one id per line."""
    ex = cfg.get("exclude") or []
    if isinstance(ex, str):
        p = Path(ex)
        p = p if p.is_absolute() or p.is_file() else root / p
        if p.suffix.lower() == ".csv":
            return [str(v) for v in pd.read_csv(p, dtype=str)["image_id"]]
        return [line.strip() for line in p.read_text().splitlines() if line.strip()]
    return [str(v) for v in ex]


def read_dataset(name: str, cfg: dict) -> tuple[pd.DataFrame, dict]:
    """Read dataset ``name`` as configured; returns (validated manifest, report dict).

    Raises :class:`~fundusfm.data.manifest.ManifestError` naming file, row, column and value
    for bad input: unreadable or missing label files, duplicate ids, unknown label values,
    paths escaping the root, missing images (unless ``on_missing: exclude`` or listed in
    ``exclude``), unlabelled images when ``on_unlabelled: error``.
    """
    cfg = dict(cfg or {})
    bad_keys = option_problems(name, cfg) if cfg.get("adapter") else []
    if bad_keys:
        raise ManifestError(name, bad_keys)
    adapter_name = cfg.get("adapter")
    if not adapter_name or "root" not in cfg:
        raise ManifestError(name, [{"file": "config", "row": "", "column": "adapter/root", "value": str(cfg),
                                    "message": "a dataset entry needs `adapter:` and `root:`"}])
    root = Path(cfg["root"])
    if not root.is_dir():
        raise ManifestError(name, [{"file": str(root), "row": "", "column": "root", "value": str(root),
                                    "message": "dataset root is not a directory (download the dataset there, or fix `root:`)"}])
    on_missing = cfg.get("on_missing", "error")
    on_unlabelled = cfg.get("on_unlabelled", "report")
    for key, value, allowed in (("on_missing", on_missing, ("error", "exclude")),
                                ("on_unlabelled", on_unlabelled, ("report", "error")),
                                ("on_quality_reject", cfg.get("on_quality_reject", "exclude"), ("exclude", "keep"))):
        if value not in allowed:
            raise ManifestError(name, [{"file": "config", "row": "", "column": key, "value": str(value),
                                        "message": f"must be one of {allowed}"}])
    if str(adapter_name).lower() == "synth":
        adapter = Adapter(name="synth", read=lambda ctx: _read_synth(name, root), summary="synthetic", layout="")
    else:
        adapter = get_adapter(adapter_name)
    report = Report(name, adapter.name, root)
    ctx = Context(name, root, cfg, report)
    df = adapter.read(ctx)
    if report.errors:
        # the rows that did read are still checked, so one run lists every problem
        rest: list[dict] = []
        try:
            _finish(df, ctx, adapter, on_missing, on_unlabelled)
        except ManifestError as e:
            # the same cell found again by validation (a value the adapter passed through) is shown once
            seen = {(str(p["file"]), str(p["row"]), str(p["value"])) for p in report.errors}
            rest = [p for p in e.problems if (str(p["file"]), str(p["row"]), str(p["value"])) not in seen]
        except Exception:  # noqa: BLE001 - the adapter's own errors are the ones to show then
            pass
        raise ManifestError(name, report.errors + rest)
    df = _finish(df, ctx, adapter, on_missing, on_unlabelled)
    log.info("%s: %d images, %d patients (%s adapter)", name, len(df), df["patient_id"].nunique(), adapter.name)
    return df, report.to_dict(df)


def quality_reject_default(adapter: str) -> str:
    """``on_quality_reject`` when the config does not say: a user's own data (``csv``,
    ``manifest``) drops what its grader called ungradable; the public adapters keep their
    quality grades as labels (EyeQ's grading task, Messidor-2's gradable flag)."""
    return "exclude" if adapter in {"csv", "manifest"} else "keep"


def _finish(df: pd.DataFrame, ctx: Context, adapter: Adapter, on_missing: str, on_unlabelled: str) -> pd.DataFrame:
    """Exclusions, missing files, unlabelled images, normal/abnormal, validation: the same for every adapter."""
    report, root = ctx.report, ctx.root
    attrs = dict(df.attrs)
    if df.empty:
        raise ManifestError(ctx.name, [{"file": str(root), "row": "", "column": "", "value": "",
                                        "message": f"no images found for adapter {adapter.name!r}; check `root:` "
                                                   f"against the layout in docs/datasets.md"}])
    for col, default in (("patient_id", ""), ("eye", "U"), ("split", "")):
        if col not in df.columns:
            df[col] = default
    df = df.reset_index(drop=True)
    keep = pd.Series(True, index=df.index)

    excluded = set(_exclude_list(ctx.cfg, root))
    ids = df["image_id"].astype(str)
    for iid in sorted(excluded - set(ids)):
        report.warnings.append(f"exclude: {iid!r} is not an image of this dataset")
    for i in df.index[ids.isin(excluded)]:
        keep[i] = False
        report.excluded.append(_excluded_row(df, i, "config exclude"))

    if "quality" in df.columns and ctx.cfg.get("on_quality_reject", quality_reject_default(adapter.name)) == "exclude":
        graded = df["quality"].map(lambda v: "" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v).strip().lower())
        for i in df.index[graded.eq("reject") & keep]:
            keep[i] = False
            report.excluded.append(_excluded_row(df, i, "grader quality: reject"))

    paths = df["path"].fillna("").astype(str).str.replace("\\", "/", regex=False)
    missing = [i for i in df.index if keep[i] and paths[i] and not path_escapes(paths[i]) and not (root / paths[i]).is_file()]
    if missing and on_missing == "exclude":
        for i in missing:
            keep[i] = False
            report.excluded.append(_excluded_row(df, i, "image file missing"))
        log.warning("%s: %d listed images missing on disk, excluded (on_missing: exclude)", ctx.name, len(missing))
    # (with on_missing: error, validate_manifest below raises listing every missing file)

    if adapter.labelled_dirs is not None and not df.empty:
        import re

        listed = set(paths)
        rx = re.compile(adapter.labelled_dirs, re.I)
        from fundusfm.data.adapters.folders import NOT_PHOTOS

        unl = [f for f in ctx.index.images if rx.search(f) and f not in listed and not NOT_PHOTOS.search(f)]
        report.unlabelled_images.extend(unl)
    report.unlabelled_images = sorted(set(report.unlabelled_images))
    # raised with the validation's problems below, so one run lists them all
    unlabelled = [{"file": str(root / f), "row": "", "column": "", "value": f,
                   "message": "image on disk has no label (on_unlabelled: error)"}
                  for f in report.unlabelled_images] if on_unlabelled == "error" else []

    if not keep.any():
        reasons: dict[str, int] = {}
        for e in report.excluded:
            reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
        raise ManifestError(ctx.name, [{"file": str(root), "row": "", "column": "", "value": "",
                                        "message": f"all {len(df)} listed images were excluded ("
                                                   + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
                                                   + "); nothing is left to study"}])
    df = df[keep].reset_index(drop=True)
    df.attrs = attrs
    if "source_label" in df.columns:
        df["source_label"] = df["source_label"].fillna("").astype(str)
    # validate first (bad label values must not be coerced away by the derivation), derive, re-check
    try:
        df = validate_manifest(df, ctx.name, root, drop_provenance=False)
    except ManifestError as e:
        raise ManifestError(ctx.name, e.problems + unlabelled) from None
    if unlabelled:
        raise ManifestError(ctx.name, unlabelled)
    exhaustive = bool(ctx.cfg.get("exhaustive", adapter.exhaustive))
    if any(c in df.columns for c in DISEASE_COLUMNS + ("normal", "abnormal")):
        df = harmonise_abnormal(df, exhaustive=exhaustive)
        df.attrs = attrs
    return order_columns(validate_manifest(df, ctx.name, root, check_files=False))


def _excluded_row(df: pd.DataFrame, i: int, reason: str) -> dict:
    get = lambda c: "" if c not in df.columns or pd.isna(df.at[i, c]) else str(df.at[i, c])  # noqa: E731
    return {"image_id": get("image_id"), "path": get("path"), "reason": reason, "file": get("_file"), "row": get("_row")}


def list_adapters() -> list[str]:
    """Registered adapter names (plus ``synth``)."""
    return sorted(ADAPTERS) + ["synth"]

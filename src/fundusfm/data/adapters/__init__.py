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
- ``max_unknown_fraction``: ingest fails when unmappable source values leave more than this
  share of a label column unknown (the message names the values).

Each adapter declares its own options, with their types, in ``Adapter.options``;
:func:`option_problems` checks a dataset entry against them before any job runs.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import pandas as pd

from fundusfm.data.adapters import aptos, deepdrid, eyepacs, folders, generic, idrid, messidor, odir, papila, refuge, rfmid
from fundusfm.data.adapters.base import Adapter, Context, Opt, Report, option_type_problem, unknown_value_counts
from fundusfm.data.manifest import ManifestError, closest, order_columns, path_escapes, validate_manifest
from fundusfm.data.vocab import DISEASE_COLUMNS, LABELS, harmonise_abnormal

log = logging.getLogger(__name__)
# share of a label column that unknown source values may blank before ingest fails
DEFAULT_MAX_UNKNOWN = 0.05

ADAPTERS: dict[str, Adapter] = {a.name: a for a in [
    aptos.ADAPTER, eyepacs.ADAPTER, eyepacs.EYEQ, idrid.ADAPTER, messidor.ADAPTER, odir.ADAPTER, rfmid.ADAPTER,
    papila.ADAPTER, folders.JSIEC, folders.GLAUCOMA_FUNDUS, refuge.ADAPTER, deepdrid.ADAPTER, folders.RETFOUND,
    generic.CSV, folders.IMAGEFOLDER, generic.MANIFEST,
]}
# other spellings users will type
ALIASES = {"aptos": "aptos2019", "kaggle_dr": "eyepacs", "kaggle_dr2015": "eyepacs", "messidor": "messidor2",
           "messidor-2": "messidor2", "odir": "odir5k", "odir-5k": "odir5k", "glaucoma-fundus": "glaucoma_fundus",
           "retfound_benchmark": "retfound"}


def get_adapter(name: str) -> Adapter:
    """The adapter registered as ``name`` (or a known alias); KeyError lists the available ones."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in ADAPTERS:
        raise KeyError(f"unknown adapter {name!r}; available: {', '.join(sorted(ADAPTERS))}, synth")
    return ADAPTERS[key]


# Options every adapter understands (handled in read_dataset / _finish), with their types.
COMMON_OPTIONS: dict[str, Opt] = {
    "adapter": Opt("str", "the adapter's name (see list_adapters())"),
    "root": Opt("path", "the folder the dataset was unpacked into"),
    "exclude": Opt("ids_or_path", "image ids to leave out on purpose: a list, or a CSV (`image_id` column) / text "
                                  "file (one id per line), relative to the root or the working directory"),
    "on_missing": Opt("choice", "`error` (default) or `exclude` for images a label file lists but the disk lacks",
                      ("error", "exclude")),
    "on_unlabelled": Opt("choice", "`report` (default) or `error` for images on disk that no label covers",
                         ("report", "error")),
    "exhaustive": Opt("bool", "true: labels list every disease found, so all-negative means normal (see vocab)"),
    "max_unknown_fraction": Opt("fraction", "ingest fails when source values the adapter cannot map leave more than "
                                            f"this share of a label column unknown (default {DEFAULT_MAX_UNKNOWN})"),
    "on_quality_reject": Opt("choice", "`exclude` or `keep` images whose grader `quality` is `reject` (default: "
                                       "exclude for `csv` / `manifest`, keep for the public adapters)", ("exclude", "keep")),
    "preprocess": Opt("mapping", "per-dataset `max_reject_fraction` / `thresholds` (read by the workflow's "
                                 "preprocess rule, not by ingest)"),
}
SYNTH_OPTIONS: dict[str, Opt] = {"synth": Opt("mapping", "parameters of the synthetic dataset (fundusfm.synth)")}


def option_schema(adapter_name: str) -> dict[str, Opt] | None:
    """Every key a dataset entry with ``adapter: adapter_name`` may hold, with its type.

    The adapter's own ``options`` plus :data:`COMMON_OPTIONS`; None for an unknown adapter.
    """
    key = str(adapter_name).lower()
    if key == "synth":
        return {**COMMON_OPTIONS, **SYNTH_OPTIONS}
    key = ALIASES.get(key, key)
    if key not in ADAPTERS:
        return None
    return {**COMMON_OPTIONS, **ADAPTERS[key].options}


def option_problems(name: str, cfg: dict) -> list[dict]:
    """Problems with dataset ``name``'s config entry, before anything is read.

    An unknown adapter; a key that adapter does not read (with the closest valid key); a
    value of the wrong type (``exhaustive: "no"``, ``label_map: grade``, an integer
    ``labels_file``...). Each is a problem dict (``file`` ``config``, ``column``
    ``datasets.<name>.<key>``). The workflow's config check (so ``snakemake -n`` refuses bad
    options before any job runs) and ``read_dataset`` both use it.
    """
    if not isinstance(cfg, dict):
        return [{"file": "config", "row": "", "column": f"datasets.{name}", "value": str(cfg)[:80],
                 "message": f"a dataset entry must be a mapping (adapter, root, options), got {type(cfg).__name__}"}]
    where = f"datasets.{name}"
    adapter_name = cfg.get("adapter", "")
    if not isinstance(adapter_name, str):
        return [{"file": "config", "row": "", "column": f"{where}.adapter", "value": str(adapter_name),
                 "message": f"must be an adapter name (a string); available: {', '.join(list_adapters())}"}]
    schema = option_schema(adapter_name)
    if schema is None:
        hint = closest(adapter_name, list_adapters())
        return [{"file": "config", "row": "", "column": f"{where}.adapter", "value": adapter_name,
                 "message": "unknown adapter" + (f" (did you mean {hint!r}?)" if hint else "")
                            + f"; available: {', '.join(list_adapters())}"}]
    key = "synth" if adapter_name.lower() == "synth" else get_adapter(adapter_name).name
    valid = sorted(schema)
    problems = []
    for k, value in cfg.items():
        if k not in schema:
            hint = closest(str(k), valid)
            problems.append({"file": "config", "row": "", "column": f"{where}.{k}", "value": "",
                             "message": f"not an option of adapter {key!r}" + (f" (did you mean {hint!r}?)" if hint else "")
                                        + f"; its options: {', '.join(valid)}"})
            continue
        why = option_type_problem(value, schema[k]) if isinstance(schema[k], Opt) else None
        if why:
            problems.append({"file": "config", "row": "", "column": f"{where}.{k}", "value": str(value)[:80],
                             "message": why})
    if key == "csv" and cfg.get("on_unlabelled") == "error" and not cfg.get("image_glob"):
        # without the files it should cover, no image can be found unlisted: say so, never pass silently
        problems.append({"file": "config", "row": "", "column": f"{where}.on_unlabelled", "value": "error",
                         "message": "the csv adapter needs `image_glob:` (e.g. \"images/**/*.jpg\") to know which "
                                    "images on disk should have a row"})
    if key == "csv" and not problems:
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


def _exclude_list(name: str, cfg: dict, root: Path) -> list[str]:
    """``exclude:`` as a list of ids, or a path to a CSV/text file with an ``image_id`` column / one id per line."""
    ex = cfg.get("exclude") or []
    if isinstance(ex, str):
        p = Path(ex)
        p = p if p.is_absolute() or p.is_file() else root / p
        if not p.is_file():
            raise ManifestError(name, [{"file": str(p), "row": "", "column": "exclude", "value": ex,
                                        "message": "exclude file not found (relative paths are looked up in the "
                                                   "working directory, then under the dataset root)"}])
        if p.suffix.lower() == ".csv":
            table = pd.read_csv(p, dtype=str, keep_default_na=False)
            if "image_id" not in table.columns:
                raise ManifestError(name, [{"file": str(p), "row": 1, "column": "image_id", "value": "",
                                            "message": f"an exclude CSV needs an `image_id` column; it has {list(table.columns)}"}])
            return [str(v) for v in table["image_id"]]
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
    bad_keys = option_problems(name, cfg) if cfg.get("adapter") else []  # names, types, before reading
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

    excluded = set(_exclude_list(ctx.name, ctx.cfg, root))
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
    exhaustive = ctx.cfg.get("exhaustive", adapter.exhaustive)  # a real boolean (option_problems)
    if any(c in df.columns for c in DISEASE_COLUMNS + ("normal", "abnormal")):
        df = harmonise_abnormal(df, exhaustive=exhaustive)
        df.attrs = attrs
    df = order_columns(validate_manifest(df, ctx.name, root, check_files=False))
    _check_unknown_share(df, ctx)
    return df


def _check_unknown_share(df: pd.DataFrame, ctx: Context) -> None:
    """Fail when unmappable source values leave more than ``max_unknown_fraction`` of a label unknown.

    A few unknown keywords are reported and left unknown; a mapping that misses a whole
    class of values (a renamed folder, a new keyword spelling) would silently empty a
    task's labels, so it stops ingest naming the values and their counts.
    """
    limit = ctx.cfg.get("max_unknown_fraction", DEFAULT_MAX_UNKNOWN)
    if not ctx.report.unmapped or df.empty:
        return
    columns = [c for c in LABELS if c in df.columns]
    problems = []
    for col, values in unknown_value_counts(ctx.report.unmapped, columns).items():
        n = sum(values.values())
        if n / len(df) > limit:
            listed = ", ".join(f"{v!r} ({k})" for v, k in sorted(values.items(), key=lambda kv: -kv[1])[:20])
            problems.append({"file": str(ctx.root), "row": "", "column": col, "value": "",
                             "message": f"unknown source values leave {col} unknown for {n} of {len(df)} images "
                                        f"({n / len(df):.1%} > max_unknown_fraction {limit}): {listed}. Map them "
                                        "(class_map / value_map, or report the adapter's missing entries), or raise "
                                        "`max_unknown_fraction` for this dataset"})
    if problems:
        raise ManifestError(ctx.name, problems)


def _excluded_row(df: pd.DataFrame, i: int, reason: str) -> dict:
    get = lambda c: "" if c not in df.columns or pd.isna(df.at[i, c]) else str(df.at[i, c])  # noqa: E731
    return {"image_id": get("image_id"), "path": get("path"), "reason": reason, "file": get("_file"), "row": get("_row")}


def list_adapters() -> list[str]:
    """Registered adapter names (plus ``synth``)."""
    return sorted(ADAPTERS) + ["synth"]

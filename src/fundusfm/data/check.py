"""What a user needs to see about a dataset before launching a study on it (``fundusfm check-dataset``).

:func:`check_dataset` reads a dataset entry exactly as ingest does, but keeps going past
problems so that one run shows them all: images listed / found / missing / on disk but
unlisted, patients and eyes, counts per harmonised label (unknowns included), source values
with no harmonised meaning, id collisions (exact duplicates and near-collisions such as an
MRN typed without its leading zeros), the dataset's official splits and the split groups
each task will use. :func:`format_text` renders the result for a terminal; the dict itself
is the JSON form.

Severity: an *error* is something ingest would stop at (a missing file under
``on_missing: error``, an unlisted image under ``on_unlabelled: error``, a duplicate id, a
bad value, a bad option, a symlink out of the root); a *warning* is something a user should
look at but ingest accepts (a near-collision, an unknown value left unknown, an unlisted
image under ``on_unlabelled: report``, excluded images, no patient ids).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd

from fundusfm.data.adapters import Adapter, _finish, _read_synth, get_adapter, option_problems
from fundusfm.data.adapters.base import Context, Report
from fundusfm.data.manifest import ManifestError, format_problem, path_escapes
from fundusfm.data.vocab import LABELS

LISTED = 20  # entries of each list shown in the text form (the JSON has them all)


def near_key(text: str) -> str:
    """A key under which ids that differ only in case, punctuation, spaces or leading zeros
    of a number coincide (``001234`` / ``1234``, ``AB-12`` / ``ab12``)."""
    t = re.sub(r"[^0-9a-z/.]", "", str(text).lower())
    return re.sub(r"(?<![0-9])0+(?=[0-9])", "", t)


def near_collisions(values) -> list[list[str]]:
    """Groups of distinct values that share a :func:`near_key` (each group sorted)."""
    groups: dict[str, set[str]] = defaultdict(set)
    for v in values:
        v = str(v)
        if v:
            groups[near_key(v)].add(v)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def _cell(v) -> str:
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _problem(message: str, **where) -> dict:
    return {"file": where.get("file", "config"), "row": where.get("row", ""), "column": where.get("column", ""),
            "value": where.get("value", ""), "message": message}


def check_dataset(name: str, cfg: dict, config: dict | None = None) -> dict:
    """Check dataset ``name`` (its config entry ``cfg``; ``config`` the whole study config,
    for the tasks that use it). Returns a JSON-able dict; ``result["errors"]`` empty means
    ingest will accept the dataset."""
    cfg = {k: v for k, v in dict(cfg or {}).items() if k != "preprocess"}
    out: dict = {"dataset": name, "adapter": str(cfg.get("adapter", "")), "root": str(cfg.get("root", "")),
                 "errors": [], "warnings": []}
    errors, warnings = out["errors"], out["warnings"]

    def finish() -> dict:
        out["status"] = "errors" if errors else "warnings" if warnings else "ok"
        return out

    bad = option_problems(name, cfg) if cfg.get("adapter") else [
        _problem("a dataset entry needs `adapter:` and `root:`", column=f"datasets.{name}.adapter")]
    if not bad and "root" not in cfg:
        bad = [_problem("a dataset entry needs `root:`", column=f"datasets.{name}.root")]
    if bad:
        errors.extend(bad)
        return finish()
    root = Path(cfg["root"])
    if not root.is_dir():
        errors.append(_problem("dataset root is not a directory (download the dataset there, or fix `root:`)",
                               file=str(root), column="root", value=str(root)))
        return finish()
    if str(cfg["adapter"]).lower() == "synth":
        adapter = Adapter(name="synth", read=lambda ctx: _read_synth(name, root), summary="synthetic", layout="")
    else:
        adapter = get_adapter(cfg["adapter"])
    out["adapter"] = adapter.name
    report = Report(name, adapter.name, root)
    ctx = Context(name, root, cfg, report)
    try:
        raw = adapter.read(ctx)
    except ManifestError as e:
        errors.extend(e.problems + report.errors)
        return finish()
    errors.extend(report.errors)
    raw = raw.reset_index(drop=True)
    for col in ("patient_id", "eye", "split"):
        if col not in raw.columns:
            raw[col] = "U" if col == "eye" else ""

    # ---------------------------------------------------------------- images
    paths = raw["path"].map(_cell).str.replace("\\", "/", regex=False) if "path" in raw else pd.Series([], dtype=str)
    ids = raw["image_id"].map(_cell) if "image_id" in raw else pd.Series([""] * len(raw))
    on_disk = set(ctx.index.images)
    found = [bool(p) and not path_escapes(p) and (root / p).is_file() for p in paths]
    missing_rows = [i for i, ok in enumerate(found) if not ok]
    on_missing = cfg.get("on_missing", "error")
    by_near_path: dict[str, list[str]] = defaultdict(list)
    listed = set(paths)
    for f in on_disk - listed:
        by_near_path[near_key(f)].append(f)
    missing = []
    for i in missing_rows:
        entry = {"image_id": ids[i], "path": paths[i], "file": _cell(raw.at[i, "_file"]) if "_file" in raw else "",
                 "row": _cell(raw.at[i, "_row"]) if "_row" in raw else ""}
        near = sorted(by_near_path.get(near_key(paths[i]), []))
        if near:
            entry["near"] = near
        missing.append(entry)
        msg = "image file missing" + (f"; on disk: {', '.join(near)} (differs only in case, punctuation or leading zeros)"
                                      if near else "")
        where = dict(file=entry["file"] or str(root), row=entry["row"], column="path", value=paths[i])
        (errors.append(_problem(msg, **where)) if on_missing == "error"
         else warnings.append(format_problem(_problem(msg + " (excluded: on_missing: exclude)", **where))))

    # what ingest itself does next: exclusions, unlabelled images, validation, normal/abnormal
    final = None
    try:
        final = _finish(raw.copy(), ctx, adapter, "exclude", "report")
    except ManifestError as e:
        errors.extend(p for p in e.problems if "image file missing" not in p.get("message", ""))
    unlisted = sorted(set(report.unlabelled_images))
    others = sorted(on_disk - listed - set(unlisted))
    out["images"] = {"listed": int(len(raw)), "found": int(sum(found)), "missing": len(missing),
                     "unlisted": len(unlisted), "other_images_on_disk": len(others),
                     "excluded": len([e for e in report.excluded if e["reason"] != "image file missing"]),
                     "in_manifest": None if final is None else int(len(final))}
    out["missing"], out["unlisted"], out["other_images_on_disk"] = missing, unlisted, others
    out["excluded"] = [e for e in report.excluded if e["reason"] != "image file missing"]
    if unlisted:
        msg = f"{len(unlisted)} image(s) on disk that no row lists"
        if cfg.get("on_unlabelled", "report") == "error":
            errors.extend(_problem("image on disk has no label (on_unlabelled: error)", file=str(root / f), value=f)
                          for f in unlisted)
        else:
            warnings.append(msg + " (set `on_unlabelled: error` to stop on them)")
    if out["excluded"]:
        reasons = Counter(e["reason"] for e in out["excluded"])
        warnings.append("excluded: " + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())))

    # ---------------------------------------------------------------- patients, eyes, collisions
    frame = final if final is not None else raw
    pid = frame["patient_id"].map(_cell)
    fids = frame["image_id"].map(_cell)
    # validate_manifest fills a missing patient id with the image id: count the source's own ids
    source_pid = dict(zip(ids, raw["patient_id"].map(_cell)))
    has_pid = fids.map(lambda i: source_pid.get(i, "") != "") if final is not None else pid.ne("")
    eyes = Counter(frame["eye"].map(_cell).str.upper().replace("", "U"))
    per_patient = pid.where(pid != "", fids).value_counts()
    out["patients"] = {"n": int(per_patient.size), "images_with_patient_id": int(has_pid.sum()),
                       "images_without_patient_id": int(len(frame) - has_pid.sum()),
                       "images_per_patient": {"min": int(per_patient.min()) if len(per_patient) else 0,
                                              "max": int(per_patient.max()) if len(per_patient) else 0},
                       "eyes": {e: int(eyes.get(e, 0)) for e in ("R", "L", "U")}}
    if len(frame) and not has_pid.any():
        warnings.append("no patient ids: every image is its own split group (fellow eyes and repeat visits of one "
                        "patient can land in train and test); set `patient_col:` if the export has one")
    dup_ids = sorted(k for k, n in Counter(ids).items() if n > 1 and k)
    near_pids = near_collisions(set(raw["patient_id"].map(_cell)))
    near_iids = [g for g in near_collisions(set(ids)) if not set(g) & set(dup_ids)]
    out["collisions"] = {"duplicate_image_ids": dup_ids, "near_patient_ids": near_pids, "near_image_ids": near_iids}
    for g in near_pids:
        warnings.append(f"patient ids {', '.join(map(repr, g))} differ only in case, punctuation or leading zeros: "
                        "one patient typed two ways?")
    for g in near_iids:
        warnings.append(f"image ids {', '.join(map(repr, g))} differ only in case, punctuation or leading zeros")

    # ---------------------------------------------------------------- labels, unknown values, splits
    labels = {}
    for c in [c for c in LABELS if c in frame.columns]:
        vals = frame[c].map(_cell)
        counts = Counter(v if v != "" else "unknown" for v in vals)
        labels[c] = {k: int(v) for k, v in sorted(counts.items(), key=lambda kv: (kv[0] == "unknown", kv[0]))}
    out["labels"] = labels
    unknown = Counter((u["column"], u["value"]) for u in report.unmapped)
    out["unknown_values"] = [{"column": c, "value": v, "rows": int(n)} for (c, v), n in sorted(unknown.items())]
    out["unknown"] = report.unmapped
    if unknown:
        warnings.append(f"{sum(unknown.values())} source value(s) with no harmonised meaning, left unknown: "
                        + ", ".join(f"{v!r} ({c}) x{n}" for (c, v), n in sorted(unknown.items())[:LISTED]))
    warnings.extend(report.warnings)
    out["splits"] = {(k or "(none)"): int(v) for k, v in Counter(frame["split"].map(_cell).str.lower()).items()}

    # ---------------------------------------------------------------- split groups of each task
    groups = []
    if config:
        uses = []
        pre = config.get("pretrain") or {}
        if name in (pre.get("datasets") or []):
            uses.append(("pretrain", "development", pre.get("split") or {}, (pre.get("task") or {})))
        for tname, t in sorted((config.get("tasks") or {}).items()):
            if name in (t.get("datasets") or []):
                uses.append((tname, "development", t.get("split") or {}, t))
            if name in (t.get("external") or []):
                uses.append((tname, "external", {}, t))
        level = ("patient" if has_pid.all() else "image" if not has_pid.any() else "patient where given, else image")
        for tname, role, split, t in uses:
            entry = {"task": tname, "role": role, "strategy": split.get("strategy", "kfold") if role != "external" else "none",
                     "groups": level, "n_groups": int(per_patient.size)}
            wanted = [t["label"]] if t.get("label") else list(t.get("labels") or [])
            lacking = [lab for lab in wanted if lab not in labels]
            if lacking and role == "development":
                errors.append(_problem(f"task {tname!r} needs label(s) {lacking}, which this dataset does not have",
                                       column=f"tasks.{tname}.datasets", value=name))
            for lab in wanted:
                if lab in labels:
                    entry.setdefault("labelled", {})[lab] = int(len(frame) - labels[lab].get("unknown", 0))
            if entry["strategy"] == "official" and not (set(out["splits"]) - {"(none)"}):
                errors.append(_problem(f"task {tname!r} uses the official split, but no image has a split",
                                       column=f"tasks.{tname}.split.strategy", value="official"))
            groups.append(entry)
    out["split_groups"] = groups
    return finish()


def _list(lines: list[str], title: str, items: list[str]) -> None:
    if not items:
        return
    lines.append(f"  {title}:")
    lines.extend(f"    {s}" for s in items[:LISTED])
    if len(items) > LISTED:
        lines.append(f"    ... and {len(items) - LISTED} more (all in the JSON: --json)")


def format_text(r: dict) -> str:
    """The check result as text for a terminal."""
    lines = [f"dataset {r['dataset']!r} ({r['adapter']} adapter, root {r['root']}): {r['status'].upper()}"]
    im = r.get("images")
    if im:
        lines.append(f"images: {im['listed']} listed, {im['found']} found, {im['missing']} missing, "
                     f"{im['unlisted']} on disk but unlisted, {im['excluded']} excluded"
                     + (f", {im['in_manifest']} in the manifest" if im["in_manifest"] is not None else ""))
        _list(lines, "missing", [f"{m['path']} ({m['file']} row {m['row']})"
                                 + (f"  <- on disk: {', '.join(m['near'])}" if m.get("near") else "") for m in r["missing"]])
        _list(lines, "on disk, unlisted", r["unlisted"])
        if im["other_images_on_disk"]:
            lines.append(f"  {im['other_images_on_disk']} other image file(s) under the root that the adapter does not "
                         f"read (e.g. {', '.join(r['other_images_on_disk'][:3])})")
        _list(lines, "excluded", [f"{e['image_id']}: {e['reason']}" for e in r["excluded"]])
    pt = r.get("patients")
    if pt:
        lines.append(f"patients: {pt['n']} ({pt['images_with_patient_id']} images with a patient id, "
                     f"{pt['images_without_patient_id']} without); images per patient "
                     f"{pt['images_per_patient']['min']}-{pt['images_per_patient']['max']}; eyes "
                     + ", ".join(f"{k} {v}" for k, v in pt["eyes"].items()))
    if "labels" in r:
        lines.append("labels:" if r["labels"] else "labels: none")
        for lab, counts in r["labels"].items():
            lines.append(f"  {lab}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        _list(lines, "unknown values (left unknown)", [f"{u['value']!r} in {u['column']!r}: {u['rows']} row(s)"
                                                       for u in r["unknown_values"]])
    col = r.get("collisions")
    if col:
        dup, npid, niid = col["duplicate_image_ids"], col["near_patient_ids"], col["near_image_ids"]
        lines.append(f"id collisions: {len(dup)} duplicate image id(s), {len(npid)} near-collision(s) of patient ids, "
                     f"{len(niid)} of image ids")
        _list(lines, "duplicate image ids", dup)
        _list(lines, "patient ids alike", [" ~ ".join(g) for g in npid])
        _list(lines, "image ids alike", [" ~ ".join(g) for g in niid])
    if "splits" in r:
        lines.append("official splits: " + ", ".join(f"{k} {v}" for k, v in sorted(r["splits"].items())))
    if r.get("split_groups"):
        lines.append("split groups:")
        for g in r["split_groups"]:
            lab = "; labelled " + ", ".join(f"{k} {v}" for k, v in g["labelled"].items()) if g.get("labelled") else ""
            lines.append(f"  {g['task']} ({g['role']}, {g['strategy']}): {g['n_groups']} groups by {g['groups']}{lab}")
    elif "split_groups" in r:
        lines.append("split groups: no task uses this dataset")
    if r["errors"]:
        lines.append(f"ERRORS ({len(r['errors'])}):")
        lines.extend("  " + format_problem(p) for p in r["errors"][:LISTED * 5])
        if len(r["errors"]) > LISTED * 5:
            lines.append(f"  ... and {len(r['errors']) - LISTED * 5} more (all in the JSON: --json)")
    if r["warnings"]:
        lines.append(f"warnings ({len(r['warnings'])}):")
        lines.extend(f"  {w}" for w in r["warnings"][:LISTED * 5])
    return "\n".join(lines)

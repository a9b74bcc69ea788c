"""Generic adapters: ``csv`` (a labels table + a column mapping in the config) and ``manifest``
(a CSV already in the manifest contract, e.g. written by the user's own Snakemake rule)."""

from __future__ import annotations

from pathlib import Path

from fundusfm.data.adapters.base import Adapter, Context, IMAGE_EXTS, parse_eye, read_table, require_columns, rows
from fundusfm.data.manifest import REQUIRED_COLUMNS, ManifestError, read_manifest_csv, validate_manifest
from fundusfm.data.vocab import LABELS


def _config_error(ctx: Context, key: str, value, message: str) -> ManifestError:
    return ManifestError(ctx.name, [{"file": "config", "row": "", "column": key, "value": str(value), "message": message}])


def read_csv_adapter(ctx: Context):
    """Labels table + mapping: ``labels_file``, ``image_col``, optional ``patient_col``, ``eye_col``,
    ``split_col`` (+ ``split_map``), ``label_map: {label: column}``, ``value_map: {label: {source: value}}``,
    ``path_template`` (``str.format`` over the row's columns, e.g. ``images/{id_code}.png``), ``sheet``."""
    if not ctx.option("labels_file"):
        raise _config_error(ctx, "labels_file", "", "the csv adapter needs `labels_file:`")
    path = ctx.label_file("labels_file", "", "labels file")
    df = read_table(path, ctx.name, sheet=ctx.option("sheet", 0))
    image_col = ctx.option("image_col")
    if not image_col:
        raise _config_error(ctx, "image_col", "", "the csv adapter needs `image_col:`")
    label_map: dict = ctx.option("label_map", {}) or {}
    for label in label_map:
        if label not in LABELS:
            raise _config_error(ctx, "label_map", label, f"not a harmonised label; known: {', '.join(LABELS)}")
    value_map: dict = {k: {str(a): b for a, b in v.items()} for k, v in (ctx.option("value_map", {}) or {}).items()}
    split_map = {str(k).lower(): v for k, v in (ctx.option("split_map", {}) or {}).items()}
    needed = [image_col] + [c for c in (ctx.option("patient_col"), ctx.option("eye_col"), ctx.option("split_col")) if c]
    require_columns(df, needed + list(label_map.values()), path, ctx.name)
    template = ctx.option("path_template")
    records = []
    for r in df.to_dict("records"):
        value = r[image_col]
        name = value.replace("\\", "/").rsplit("/", 1)[-1]
        iid = name.rsplit(".", 1)[0] if Path(name).suffix.lower() in IMAGE_EXTS else name
        if template:
            try:
                rel = template.format_map({**r, "image_id": iid})
            except KeyError as e:
                raise _config_error(ctx, "path_template", template, f"unknown field {e}; columns: {list(df.columns)}") from e
        elif Path(value).suffix and (ctx.root / value).is_file() or ".." in value.replace("\\", "/").split("/"):
            rel = value.replace("\\", "/")
        else:
            rel = ctx.locate(value, None, value, path, r["_row"])
        labels = {}
        for label, col in label_map.items():
            raw = r[col]
            if label in value_map and raw != "":
                if raw not in value_map[label]:
                    ctx.report.unmapped_label(path, r["_row"], col, raw, f"not in value_map.{label}; {label} left unknown")
                    labels[label] = None
                else:
                    labels[label] = value_map[label][raw]
            else:
                labels[label] = raw
        split = r[ctx.option("split_col")].strip() if ctx.option("split_col") else ""
        split = split_map.get(split.lower(), split.lower())
        records.append({
            "image_id": iid, "path": rel,
            "patient_id": r[ctx.option("patient_col")] if ctx.option("patient_col") else "",
            "eye": parse_eye(r[ctx.option("eye_col")]) if ctx.option("eye_col") else "U",
            "split": split, **labels,
            "source_label": "; ".join(f"{c}={r[c]}" for c in label_map.values()),
            "_file": r["_file"], "_row": r["_row"],
        })
    return rows(records, dict(label_map))


def manifest_csv_path(cfg: dict) -> Path:
    """Where the ``manifest`` adapter reads a dataset's CSV: ``path`` under ``root`` when
    that file exists, else ``path`` as given (absolute, or relative to the working
    directory: e.g. a file a user's Snakemake rule writes)."""
    p = Path(cfg.get("path", "manifest.csv"))
    if p.is_absolute() or not cfg.get("root"):
        return p
    under_root = Path(cfg["root"]) / p
    return under_root if under_root.is_file() else p


def read_manifest_adapter(ctx: Context):
    """A CSV already in the manifest format (``path:`` relative to the root, else to the working directory)."""
    given = ctx.option("path", "manifest.csv")
    p = manifest_csv_path({"path": given, "root": str(ctx.root)})
    if not p.is_file():
        raise _config_error(ctx, "path", given, f"manifest CSV not found (looked in {ctx.root} and the working directory)")
    df = read_manifest_csv(p)
    if any(c not in df.columns for c in REQUIRED_COLUMNS):
        # fail here, naming the file and its header, before anything indexes the missing column
        validate_manifest(df, ctx.name, ctx.root, check_files=False)
    return df


CSV = Adapter(
    name="csv", read=read_csv_adapter,
    summary="any labels table (CSV / xlsx) with a column mapping in the config",
    layout="`labels_file` (relative to the root), `image_col` (id, file name or relative path), optional "
           "`patient_col`, `eye_col` (L/left/OS, R/right/OD), `split_col` + `split_map`, `label_map: {label: column}`, "
           "`value_map: {label: {source value: harmonised value}}` (source values missing from it are reported), "
           "`path_template` (e.g. `images/{image_id}.png`, fields are the row's columns), `sheet` for spreadsheets.",
    mapping={"<column>": "via label_map / value_map in the config"},
)
MANIFEST = Adapter(
    name="manifest", read=read_manifest_adapter,
    summary="a manifest CSV you wrote yourself (e.g. with your own Snakemake rule)",
    layout="`path:` a CSV with the manifest columns (`image_id`, `path` relative to `root`, optional `patient_id`, "
           "`eye`, `split`, harmonised label columns, `source_label`); validated like every adapter's output.",
    mapping={"<label column>": "as given, checked against the vocabulary"},
)

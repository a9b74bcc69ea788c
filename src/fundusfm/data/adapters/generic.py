"""Generic adapters: ``csv`` (a labels table + a column mapping in the config) and ``manifest``
(a CSV already in the manifest contract, e.g. written by the user's own Snakemake rule)."""

from __future__ import annotations

import re
import string
from datetime import datetime
from pathlib import Path

from fundusfm.data.adapters.base import Adapter, Context, IMAGE_EXTS, Opt, parse_eye, read_table, require_columns, rows
from fundusfm.data.manifest import REQUIRED_COLUMNS, ManifestError, closest, read_manifest_csv, validate_manifest
from fundusfm.data.vocab import LABELS


def _config_error(ctx: Context, key: str, value, message: str) -> ManifestError:
    return ManifestError(ctx.name, [{"file": "config", "row": "", "column": key, "value": str(value), "message": message}])


# grader image-quality codes -> the manifest's `quality` (a `reject` image is excluded at ingest)
QUALITY_VALUES = ("good", "usable", "reject")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?$")


class _Template:
    """A ``str.format`` template over a row's columns, checked once against the table's header.

    Fields are the table's column names (plus ``image_id`` in ``path_template``, ``eye`` and
    ``eye_odos``); a date column (``date_columns``) is a ``datetime`` there, so
    ``{Visit:%Y%m%d}`` formats it. Errors become problems naming the file, row and field.
    """

    def __init__(self, ctx: Context, key: str, text: str, fields: list[str]):
        self.key, self.text = key, str(text)
        try:
            parsed = [f for _, f, _, _ in string.Formatter().parse(self.text) if f is not None]
        except ValueError as e:
            raise _config_error(ctx, key, text, f"not a valid template ({e}); fields look like {{column}}") from e
        unknown = []
        for f in parsed:
            base = re.split(r"[.\[]", f, maxsplit=1)[0]
            if base == "" or base.isdigit():
                raise _config_error(ctx, key, text, "template fields must name a column, e.g. {MRN}")
            if base not in fields:
                unknown.append(base)
        if unknown:
            hints = [f"{u!r} (did you mean {h!r}?)" if (h := closest(u, fields)) else repr(u) for u in unknown]
            raise _config_error(ctx, key, text, f"unknown field(s) {', '.join(hints)}; columns: "
                                                f"{', '.join(f for f in fields if not f.startswith('_'))}")
        self.fields = {re.split(r"[.\[]", f, maxsplit=1)[0] for f in parsed}

    def render(self, values: dict) -> str:
        return self.text.format_map(values)


def _parse_date(value: str, fmt):
    if fmt:
        return datetime.strptime(value, str(fmt))
    if not _ISO_DATE.match(value):
        raise ValueError("not an ISO date (YYYY-MM-DD); give its format in `date_columns`, e.g. {Visit: '%d.%m.%Y'}")
    return datetime.fromisoformat(value)


def _glob_images(ctx: Context, patterns) -> list[str]:
    """Image files under the root matching ``image_glob`` (one pattern or a list), as relative posix paths."""
    out = set()
    for pat in [patterns] if isinstance(patterns, str) else list(patterns):
        # relative globs without '..' only (option_type_problem, checked with the config)
        for f in ctx.root.glob(str(pat)):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTS and not f.name.startswith("."):
                out.add(f.relative_to(ctx.root).as_posix())
    return sorted(out)


def _stem(name: str) -> str:
    """Image id from a file name or relative path: the name without an image extension."""
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if Path(base).suffix.lower() in IMAGE_EXTS else base


def read_csv_adapter(ctx: Context):
    """Labels table + mapping (docs/adding-a-dataset.md):

    - the table: ``labels_file``, ``sheet`` (name or 0-based index), ``header_row`` (the
      spreadsheet line of the header, 1-based; title rows above it are skipped);
    - the image: ``image_col`` (file name, relative path or id) and/or ``path_template``
      (``str.format`` over the row's columns, e.g. ``{MRN}/{Visit:%Y-%m-%d}/{MRN}_{Visit:%Y%m%d}_{Eye}.jpg``),
      ``id_template`` for the image id (default: from ``image_col``, else the file stem of the path),
      ``date_columns: {column: strptime format or null for ISO dates}``;
    - ``patient_col`` or ``patient_template`` (e.g. ``{MRN:0>7}``: an MRN padded back to 7 digits),
      ``eye_col``, ``split_col`` (+ ``split_map``), ``label_map: {label: column}``,
      ``value_map: {label: {source: value}}``;
    - ``eyes: {R: {field: column}, L: {field: column}}``: one row holds both eyes (wide export);
      each row gives one image per eye, the eye's columns seen under the field names;
    - ``quality_col`` + ``quality_map: {source: good|usable|reject}``: a grader's image quality;
    - ``image_glob``: the images on disk (e.g. ``"*/*/*.jpg"``), so files no row lists are reported.
    """
    if not ctx.option("labels_file"):
        raise _config_error(ctx, "labels_file", "", "the csv adapter needs `labels_file:`")
    path = ctx.label_file("labels_file", "", "labels file")
    header_row = ctx.option("header_row", 1)
    if isinstance(header_row, bool) or not isinstance(header_row, int) or header_row < 1:
        raise _config_error(ctx, "header_row", header_row, "the spreadsheet line of the header: an integer >= 1")
    df = read_table(path, ctx.name, header_row=header_row - 1, sheet=ctx.option("sheet", 0))
    image_col = ctx.option("image_col")
    template_text = ctx.option("path_template")
    if not image_col and not template_text:
        raise _config_error(ctx, "image_col", "", "the csv adapter needs `image_col:` (the file column) "
                                                  "or `path_template:` (the path built from the row's columns)")
    label_map: dict = ctx.option("label_map", {}) or {}
    for label in label_map:
        if label not in LABELS:
            raise _config_error(ctx, "label_map", label, f"not a harmonised label; known: {', '.join(LABELS)}")
    value_map: dict = {k: {str(a): b for a, b in v.items()} for k, v in (ctx.option("value_map", {}) or {}).items()}
    split_map = {str(k).lower(): v for k, v in (ctx.option("split_map", {}) or {}).items()}
    quality_col = ctx.option("quality_col")
    quality_map = {str(k).strip().lower(): str(v).strip().lower() for k, v in (ctx.option("quality_map", {}) or {}).items()}
    for src, v in quality_map.items():
        if v not in QUALITY_VALUES:
            raise _config_error(ctx, f"quality_map.{src}", v, f"must be one of {', '.join(QUALITY_VALUES)}")
    eyes = ctx.option("eyes")
    if eyes is not None:
        if not isinstance(eyes, dict) or not eyes or any(parse_eye(k) == "U" or not isinstance(v, dict) for k, v in eyes.items()):
            raise _config_error(ctx, "eyes", eyes, "expected {R: {field: column, ...}, L: {field: column, ...}}")
    eye_fields = sorted({f for v in (eyes or {}).values() for f in v})
    columns = [c for c in df.columns if not c.startswith("_")]
    # columns an eye overlay provides are fields too; the columns it reads must exist
    overlay_sources = [c for v in (eyes or {}).values() for c in v.values()]
    require_columns(df, overlay_sources, path, ctx.name)
    fields = columns + [f for f in eye_fields if f not in columns]
    needed = [c for c in (image_col, ctx.option("patient_col"), ctx.option("eye_col"), ctx.option("split_col"), quality_col) if c]
    require_columns(df, [c for c in needed + list(label_map.values()) if c not in eye_fields], path, ctx.name)
    date_columns = ctx.option("date_columns", {}) or {}
    require_columns(df, [c for c in date_columns if c not in eye_fields], path, ctx.name)
    extra = ["image_id", "eye", "eye_odos"]
    path_tpl = _Template(ctx, "path_template", template_text, fields + extra) if template_text else None
    id_tpl = _Template(ctx, "id_template", ctx.option("id_template"), fields + ["eye", "eye_odos"]) if ctx.option("id_template") else None
    pid_tpl = (_Template(ctx, "patient_template", ctx.option("patient_template"), fields)
               if ctx.option("patient_template") else None)
    if pid_tpl and ctx.option("patient_col"):
        raise _config_error(ctx, "patient_template", pid_tpl.text, "give `patient_col` or `patient_template`, not both")
    if path_tpl and "image_id" in path_tpl.fields and not (image_col or id_tpl):
        raise _config_error(ctx, "path_template", template_text,
                            "uses {image_id}, but no `image_col` or `id_template` says what the id is")

    source_rows = []
    for r in df.to_dict("records"):
        if eyes:
            for side, over in eyes.items():
                source_rows.append(({**r, **{f: r[c] for f, c in over.items()}}, parse_eye(side)))
        elif ctx.option("eye_col"):
            raw_eye = r[ctx.option("eye_col")]
            eye = parse_eye(raw_eye)
            if eye == "U" and raw_eye.strip() != "":
                ctx.report.unmapped_label(path, r["_row"], ctx.option("eye_col"), raw_eye,
                                          "not an eye (OD/OS, R/L, right/left); eye left U")
            source_rows.append((r, eye))
        else:
            source_rows.append((r, "U"))

    records = []
    for r, eye in source_rows:
        row, bad = r["_row"], False
        values = dict(r)
        values.update(eye=eye, eye_odos={"R": "OD", "L": "OS"}.get(eye, ""))
        for col, fmt in date_columns.items():
            raw = r[col]
            if raw == "":
                continue
            try:
                values[col] = _parse_date(raw, fmt)
            except ValueError as e:
                ctx.report.error(path, row, col, raw, f"not a date{f' in format {fmt!r}' if fmt else ''} ({e})")
                bad = True
        if bad:
            continue
        tpl = None
        try:
            if id_tpl:
                tpl = id_tpl
                iid = id_tpl.render(values)
            elif image_col:
                iid = _stem(r[image_col])
            else:
                iid = None
            if pid_tpl:
                tpl = pid_tpl
                patient = pid_tpl.render(values)
            else:
                patient = r[ctx.option("patient_col")] if ctx.option("patient_col") else ""
            if path_tpl:
                tpl = path_tpl
                rel = path_tpl.render({**values, "image_id": iid})
                iid = _stem(rel) if iid is None else iid
            else:
                value = r[image_col]
                if Path(value).suffix and (ctx.root / value).is_file() or ".." in value.replace("\\", "/").split("/"):
                    rel = value.replace("\\", "/")
                else:
                    rel = ctx.locate(value, None, value, path, row)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            if tpl is None:
                raise
            # a format spec that does not fit the value ({MRN:%Y} on text, {Visit:0>8} on a date)
            ctx.report.error(path, row, tpl.key, "; ".join(f"{c}={r[c]}" for c in sorted(tpl.fields & set(r))),
                             f"template {tpl.text!r} does not fit this row ({type(e).__name__}: {e})")
            continue
        labels = {}
        for label, col in label_map.items():
            raw = r[col]
            if label in value_map and raw != "":
                if raw not in value_map[label]:
                    ctx.report.unmapped_label(path, row, col, raw, f"not in value_map.{label}; {label} left unknown")
                    labels[label] = None
                else:
                    labels[label] = value_map[label][raw]
            else:
                labels[label] = raw
        quality = ""
        if quality_col:
            qraw = str(r[quality_col]).strip()
            if qraw != "":
                quality = quality_map.get(qraw.lower(), qraw.lower() if not quality_map else None)
                if quality is None:
                    ctx.report.unmapped_label(path, row, quality_col, qraw, "not in quality_map; quality left unknown")
                    quality = ""
                elif quality not in QUALITY_VALUES:
                    ctx.report.error(path, row, quality_col, qraw,
                                     f"not a quality value ({', '.join(QUALITY_VALUES)}); map your codes with `quality_map:`")
                    quality = ""
        split = r[ctx.option("split_col")].strip() if ctx.option("split_col") else ""
        split = split_map.get(split.lower(), split.lower())
        records.append({
            "image_id": str(iid), "path": rel,
            "patient_id": patient,
            "eye": eye,
            "split": split, **labels,
            **({"quality": quality} if quality_col else {}),
            "source_label": "; ".join(f"{c}={r[c]}" for c in label_map.values()),
            "_file": r["_file"], "_row": row,
        })
    glob = ctx.option("image_glob")
    if glob:
        listed = {rec["path"].replace("\\", "/") for rec in records}
        on_disk = _glob_images(ctx, glob)
        if not on_disk:
            ctx.report.warnings.append(f"image_glob {glob!r} matches no image under {ctx.root}")
        ctx.report.unlabelled_images.extend(f for f in on_disk if f not in listed)
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
    layout="`labels_file` (relative to the root; `sheet` and `header_row` for spreadsheets with title rows), "
           "`image_col` (id, file name or relative path) and/or `path_template` (fields are the row's columns, "
           "e.g. `{MRN}/{Visit:%Y-%m-%d}/{MRN}_{Visit:%Y%m%d}_{Eye}.jpg`, with `date_columns` for dates), `id_template`, "
           "optional `patient_col` or `patient_template` (e.g. `{MRN:0>7}`), `eye_col` (L/left/OS, R/right/OD) or `eyes` (both eyes on one row), "
           "`split_col` + `split_map`, `label_map: {label: column}`, "
           "`value_map: {label: {source value: harmonised value}}` (source values missing from it are reported), "
           "`quality_col` + `quality_map` (grader quality; `reject` images are excluded), "
           "`image_glob` (the images on disk, so files no row lists are reported).",
    mapping={"<column>": "via label_map / value_map in the config"},
    options={"labels_file": Opt("path", "the labels table (CSV / xlsx), relative to the root"),
             "image_col": Opt("str", "column with the image id, file name or relative path"),
             "patient_col": Opt("str", "column with the patient id"),
             "eye_col": Opt("str", "column with the eye (L/left/OS, R/right/OD)"),
             "split_col": Opt("str", "column with the official split"),
             "split_map": Opt("split_map", "`{source value: train|val|test}` for split_col"),
             "label_map": Opt("label_map", "`{harmonised label: column}`"),
             "value_map": Opt("value_map", "`{label: {source value: harmonised value}}`"),
             "path_template": Opt("str", "image path built from the row's columns, e.g. `images/{image_id}.png`"),
             "sheet": Opt("sheet", "sheet name or 0-based index in a spreadsheet"),
             "header_row": Opt("row", "1-based line of the header (title rows above it are skipped)"),
             "id_template": Opt("str", "image id built from the row's columns (and `eye`, `eye_odos`)"),
             "patient_template": Opt("str", "patient id built from the row's columns, e.g. `{MRN:0>7}`"),
             "date_columns": Opt("mapping", "`{column: strptime format, or null for ISO dates}`"),
             "eyes": Opt("mapping", "`{R: {field: column}, L: {field: column}}`: one row holds both eyes"),
             "quality_col": Opt("str", "column with a grader's image quality"),
             "quality_map": Opt("mapping", "`{source value: good|usable|reject}` for quality_col"),
             "image_glob": Opt("patterns", "the images on disk (a glob or a list of globs, relative to the root), "
                                           "so files no row lists are reported")},
)
MANIFEST = Adapter(
    name="manifest", read=read_manifest_adapter,
    summary="a manifest CSV you wrote yourself (e.g. with your own Snakemake rule)",
    layout="`path:` a CSV with the manifest columns (`image_id`, `path` relative to `root`, optional `patient_id`, "
           "`eye`, `split`, harmonised label columns, `source_label`); validated like every adapter's output.",
    mapping={"<label column>": "as given, checked against the vocabulary"},
    options={"path": Opt("path", "the manifest CSV (under the root, else relative to the working directory)")},
)

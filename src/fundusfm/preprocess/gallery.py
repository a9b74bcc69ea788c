"""QC gallery: a contact sheet of rejected and borderline images and of every field of view
found by the bright-region fallback, grouped by reason, with the detected field of view
drawn (circle in green, straight cuts as green lines; the fallback's bounding box in orange;
dark photos stretched for display), so a person can check the QC decisions in seconds."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from fundusfm.preprocess.io import ImageReadError, read_image

log = logging.getLogger(__name__)


def _short(reason: str) -> str:
    first = re.sub(r"\s*\(.*$", "", reason.strip())  # drop the measured value
    # the first cause of a missing field of view (rim not circular, surround not dark, ...)
    first = re.sub(r"^no field of view: ([^(;]*).*", r"no field of view: \1", first).strip()
    return re.sub(r"^field of view from the bright region,\s*", "fallback: bright-region mask, ", first)


def reason_group(row) -> str:
    """Short group name of a QC row: status plus the first reason without its numbers; a
    bright-region fallback is its own group, with the quality reason that follows it."""
    fallback = str(row.get("fov_method") or "") == "mask"
    if row["status"] == "ok" and row.get("quality") == "good" and not fallback:
        return "good"
    if row["status"] == "error":
        return "error"
    reasons = [r for r in str(row.get("reason") or "").split(";") if r.strip()]
    tag = "rejected" if row["status"] == "rejected" else (row.get("quality") or "ok")
    if not reasons:
        return tag
    first = _short(reasons[0])
    if fallback and first.startswith("fallback") and len(reasons) > 1:
        first = f"{first} + {_short(reasons[1])}"
    return f"{tag}: {first}"


def _thumb(row, root: Path | None, tile: int) -> Image.Image:
    canvas = Image.new("RGB", (tile, tile), (40, 40, 40))
    path = Path(str(row["path"]))
    if root is not None and not path.is_absolute():
        path = root / path
    try:
        dec = read_image(path, min_side=tile)
    except ImageReadError:
        d = ImageDraw.Draw(canvas)
        d.line([(0, 0), (tile, tile)], fill=(200, 0, 0), width=3)
        d.line([(0, tile), (tile, 0)], fill=(200, 0, 0), width=3)
        return canvas
    im = dec.pil()
    p99 = float(np.percentile(dec.image[::4, ::4].max(axis=2), 99))
    if 0 < p99 < 128:  # a dark photo: stretched for display, so its field can be checked
        im = Image.fromarray(np.clip(dec.image.astype(np.float32) * (200 / p99), 0, 255).astype(np.uint8), "RGB")
    s = tile / max(im.size)
    small = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.BILINEAR)
    ox, oy = (tile - small.size[0]) // 2, (tile - small.size[1]) // 2
    canvas.paste(small, (ox, oy))
    try:
        cx, cy, r = (float(row[k]) for k in ("fov_cx", "fov_cy", "fov_r"))
    except (TypeError, ValueError):
        return canvas
    if all(math.isfinite(v) for v in (cx, cy, r)):
        k = tile / max(dec.width, dec.height)
        d = ImageDraw.Draw(canvas)

        def cut(key):
            try:
                v = float(row.get(key))
            except (TypeError, ValueError):
                return None
            return v if math.isfinite(v) else None
        top, bottom, left, right = (cut(f"fov_{c}") for c in ("top", "bottom", "left", "right"))
        if str(row.get("fov_method") or "") == "mask":
            box = [left if left is not None else cx - r, top if top is not None else cy - r,
                   right if right is not None else cx + r, bottom if bottom is not None else cy + r]
            d.rectangle([ox + box[0] * k, oy + box[1] * k, ox + box[2] * k, oy + box[3] * k],
                        outline=(255, 150, 0), width=2)
            # the circle through the visible rim arcs, where one was fitted
            d.ellipse([ox + (cx - r) * k, oy + (cy - r) * k, ox + (cx + r) * k, oy + (cy + r) * k],
                      outline=(255, 150, 0), width=1)
        else:
            d.ellipse([ox + (cx - r) * k, oy + (cy - r) * k, ox + (cx + r) * k, oy + (cy + r) * k],
                      outline=(0, 255, 0), width=2)
            x0, x1, y0, y1 = ox + (cx - r) * k, ox + (cx + r) * k, oy + (cy - r) * k, oy + (cy + r) * k
            for y in (top, bottom):  # straight cuts
                if y is not None:
                    d.line([(x0, oy + y * k), (x1, oy + y * k)], fill=(0, 255, 0), width=1)
            for x in (left, right):
                if x is not None:
                    d.line([(ox + x * k, y0), (ox + x * k, y1)], fill=(0, 255, 0), width=1)
    return canvas


def make_gallery(qc: pd.DataFrame, out_png: str | Path, root: str | Path | None = None,
                 per_group: int = 12, tile: int = 160, include_usable: bool = True) -> Path:
    """Write a contact sheet of the rejected, error, bright-region fallback and (if
    ``include_usable``) usable rows of the QC table ``qc``, one row of up to ``per_group``
    tiles per reason (each reject reason and each fallback its own row), the detected FOV
    drawn; ``root`` resolves relative paths. Returns the PNG path."""
    from PIL import ImageFont

    font = ImageFont.load_default()
    qc = qc.copy()
    qc["_group"] = [reason_group(r) for r in qc.to_dict("records")]
    keep = qc["status"].isin(["rejected", "error"])
    if "fov_method" in qc.columns:
        keep |= qc["fov_method"].astype(str).eq("mask")
    if include_usable:
        keep |= qc["quality"].eq("usable")
    sel = qc[keep]
    groups = sorted(sel.groupby("_group"), key=lambda g: -len(g[1]))
    label_h, head_h = 14, 20
    row_h = head_h + tile + label_h
    width = max(1, per_group) * tile
    height = max(1, len(groups)) * row_h + 24
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    d.text((4, 4), f"QC gallery: {len(qc)} images, {int((qc['status'] == 'ok').sum())} ok, "
                   f"{int((qc['status'] == 'rejected').sum())} rejected, {int((qc['status'] == 'error').sum())} "
                   f"errors; {len(sel)} shown by reason", fill=(0, 0, 0), font=font)
    root_p = Path(root) if root is not None else None
    for gi, (name, g) in enumerate(groups):
        y0 = 24 + gi * row_h
        d.text((4, y0 + 4), f"{name}  ({len(g)})", fill=(160, 0, 0), font=font)
        for j, row in enumerate(g.head(per_group).to_dict("records")):
            sheet.paste(_thumb(row, root_p, tile), (j * tile, y0 + head_h))
            d.text((j * tile + 2, y0 + head_h + tile), str(row.get("image_id") or Path(str(row["path"])).name)[:24],
                   fill=(0, 0, 0), font=font)
    if not groups:
        d.text((4, 30), "no rejected, error or usable images", fill=(0, 120, 0), font=font)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    log.info("QC gallery (%d groups, %d images) -> %s", len(groups), len(sel), out_png)
    return out_png

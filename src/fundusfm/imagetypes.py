"""Which files fundusfm reads as photographs: one list for ingest (adapters finding
images), preprocessing, ``fundusfm embed`` and ``fundusfm predict``, so a file that one
stage reads is never skipped by another.

Torch- and OpenCV-free: the adapters and the workflow's DAG import it."""

from __future__ import annotations

from pathlib import Path

# Formats Pillow (and OpenCV for JPEG) decode here. Not GIF: animated palette images are
# not fundus photographs a camera writes; such files get an error row naming the suffix.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".ppm", ".pgm", ".webp", ".jp2")


def is_image_name(name: str | Path) -> bool:
    """Whether a file name has one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def unsupported_reason(path: str | Path) -> str | None:
    """Why ``path`` is not read as a photograph (its suffix), or ``None`` when it is."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return None
    what = f"{suffix!r} files are" if suffix else "a file without a suffix is"
    return f"{path}: {what} not read as photographs (image types: {' '.join(IMAGE_SUFFIXES)})"

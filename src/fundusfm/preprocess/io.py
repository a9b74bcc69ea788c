"""Robust image decoding and writing for preprocessing.

Decoding goes through Pillow because it reads every format a dataset ships (JPEG, PNG,
TIFF, BMP, ...) and, for JPEG, can decode at 1/2, 1/4 or 1/8 size directly from the
DCT coefficients (``Image.draft``) — several times faster than a full decode followed by
a resize. Every failure becomes :class:`ImageReadError` with a message naming the file,
so one bad image never stops a stage.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

# We run our own pixel-count guard (max_pixels) before any decode; Pillow's own
# DecompressionBombWarning would only duplicate it.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".ppm", ".pgm", ".webp", ".jp2")


class ImageReadError(Exception):
    """The file could not be decoded into an image (message names the file and why)."""


@dataclass
class Decoded:
    """A decoded RGB image, possibly at reduced size.

    ``scale`` maps decoded pixels to original ones: original = scale * (x + 0.5) - 0.5
    (pixel centres at integer coordinates). ``width``/``height`` are the original size
    after EXIF orientation.
    """

    image: Image.Image  # mode RGB
    width: int
    height: int
    scale: float
    source_mode: str


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without clipping 16-bit data."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Pillow's convert('L') clips 16-bit values at 255: rescale by the range in use.
        a = np.asarray(im, dtype=np.float32)
        hi = float(a.max()) if a.size else 0.0
        div = 257.0 if hi > 255 else 1.0
        a8 = np.clip(a / div + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a8, "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels become black, i.e. background, not FOV.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")  # L, P, CMYK, YCbCr, LAB, 1, ...


def read_image(path: str | os.PathLike, min_side: int | None = None, max_pixels: int = 150_000_000) -> Decoded:
    """Decode ``path`` to RGB, at reduced size when the format allows.

    ``min_side``: the smaller side of the decoded image should stay >= this (JPEG DCT
    scaling picks the strongest 1/2, 1/4, 1/8 reduction that keeps it); ``None`` decodes
    at full size. ``max_pixels`` refuses absurdly large images (decompression bombs)
    before any pixel is decoded.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise ImageReadError(f"{p}: cannot read file ({e.strerror or e})") from None
    if size == 0:
        raise ImageReadError(f"{p}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. corrupt EXIF: the pixels may still be fine
            im = Image.open(p)
            w0, h0 = im.size
            if w0 * h0 > max_pixels:
                raise ImageReadError(
                    f"{p}: {w0}x{h0} = {w0 * h0 / 1e6:.0f} MP exceeds max_pixels "
                    f"{max_pixels / 1e6:.0f} MP (decompression-bomb guard; raise max_pixels if genuine)"
                )
            mode = im.mode
            if min_side and im.format == "JPEG":
                k = 1
                while k < 8 and min(w0, h0) // (2 * k) >= min_side:
                    k *= 2
                if k > 1:
                    im.draft("RGB" if mode in ("RGB", "YCbCr") else mode, (-(-w0 // k), -(-h0 // k)))
            im.load()
            scale = w0 / im.size[0]
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:  # pragma: no cover - guard above fires first
        raise ImageReadError(f"{p}: {e}") from None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise ImageReadError(f"{p}: cannot decode image ({type(e).__name__}: {e})") from None
    # EXIF rotation by 90/270 degrees swaps the original sides too.
    if (rgb.size[0] >= rgb.size[1]) != (w0 >= h0) and w0 != h0:
        w0, h0 = h0, w0
    return Decoded(image=rgb, width=w0, height=h0, scale=scale, source_mode=mode)


def write_image(arr: np.ndarray, path: str | os.PathLike, fmt: str) -> None:
    """Write an RGB uint8 array as PNG (fast zlib level) or JPEG q95, atomically."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if fmt == "png":
        # zlib level 1 with run-length strategy: ~2x faster than the default, similar size
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1,
                                             cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE])
    elif fmt in ("jpg", "jpeg"):
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    else:
        raise ValueError(f"unknown output format {fmt!r} (use 'png' or 'jpg')")
    if not ok:  # pragma: no cover
        raise OSError(f"{path}: encoder failed")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)

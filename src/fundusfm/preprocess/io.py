"""Robust image decoding and writing for preprocessing.

Pillow opens every file first: it reads every format a dataset ships (JPEG, PNG, TIFF,
BMP, ...) and parses the header (size, mode, EXIF orientation) without decoding pixels.
JPEGs are decoded at 1/2, 1/4 or 1/8 size directly from the DCT coefficients (libjpeg
scaling), several times faster than a full decode followed by a resize. The common case
— a colour JPEG without EXIF rotation — is decoded by OpenCV's libjpeg-turbo straight
into an RGB array (``IMREAD_REDUCED_*`` + ``IMREAD_COLOR_RGB``): the same pixels as
Pillow's ``draft`` decode, ~25 % less CPU and no PIL -> numpy copy. Everything else
(CMYK, grayscale, 16-bit, alpha, palette, rotated, or any file OpenCV refuses) goes
through Pillow. Every failure becomes :class:`ImageReadError` with a message naming the
file, so one bad image never stops a stage.

Decoding is bounded: JPEGs decode DCT-scaled, and an image that would still decode to more
than ``max_decode_pixels`` (every other format decodes at full size: a 12000x12000 PNG is
~430 MB of RGB before any copy) is refused from its header, before a pixel is decoded.
``benchmarks/decode_memory.py`` measures the peak memory of a worker. Only files with a
photograph's suffix (:data:`fundusfm.imagetypes.IMAGE_SUFFIXES`) are read.

What the file is, beyond its pixels, is reported for the QC table to act on: whether
transparency was flattened onto black (:attr:`Decoded.alpha`) and whether the photograph
is monochrome (:func:`monochrome_reason`: red-free / grey-scale photographs).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps

from fundusfm.fileio import atomic_write
from fundusfm.imagetypes import IMAGE_SUFFIXES, unsupported_reason

# We run our own pixel-count guard (max_pixels) before any decode; Pillow's own
# DecompressionBombWarning would only duplicate it.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image

IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # the one list (fundusfm.imagetypes)


class ImageReadError(Exception):
    """The file could not be decoded into an image (message names the file and why)."""


@dataclass
class Decoded:
    """A decoded RGB image, possibly at reduced size.

    ``image``: HxWx3 uint8 RGB array. ``scale`` maps decoded pixels to original ones:
    original = scale * (x + 0.5) - 0.5 (pixel centres at integer coordinates).
    ``width``/``height`` are the original size after EXIF orientation. ``alpha``: the
    file had transparent pixels, flattened onto black (background, not FOV).
    """

    image: np.ndarray
    width: int
    height: int
    scale: float
    source_mode: str
    alpha: bool = False

    def pil(self) -> Image.Image:
        """The decoded image as a Pillow RGB image (no copy)."""
        return Image.fromarray(self.image, "RGB")


# OpenCV's reduced-size colour decode flags by DCT scale factor, RGB output order
_CV_REDUCED = {1: 0, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
               8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
_CV_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.11


def _jpeg_factor(w0: int, h0: int, min_side: int | None) -> int:
    """Strongest DCT reduction 1, 2, 4 or 8 that keeps the smaller side >= ``min_side``."""
    k = 1
    if min_side:
        while k < 8 and min(w0, h0) // (2 * k) >= min_side:
            k *= 2
    return k


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block: Pillow's own path deals with it
        return 0


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
    if has_alpha(im):
        # Transparent pixels become black, i.e. background, not FOV.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")  # L, P, CMYK, YCbCr, LAB, 1, ...


def has_alpha(im: Image.Image) -> bool:
    """Whether an image has a transparency channel (or a transparent palette entry)."""
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)


def _transparent(im: Image.Image) -> bool:
    """Whether any pixel of an image with a transparency channel is not fully opaque."""
    try:
        lo, _ = im.convert("RGBA").getchannel("A").getextrema()
    except Exception:  # noqa: BLE001 - an exotic mode: count it as transparent, the row says so
        return True
    return lo < 255


# monochrome test (on a subsample of the decoded image): pixels brighter than this in their
# brightest channel are looked at; channels closer than MONO_SPREAD (mean absolute
# difference, 0-255) count as equal; one channel above MONO_SHARE of the brightness alone
# is a one-channel image. Colour fundus photographs differ by 40-120 between red and green.
MONO_MIN_LEVEL = 24
MONO_SPREAD = 4.0
MONO_SHARE = 0.97
_MONO_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def monochrome_reason(dec: Decoded) -> str | None:
    """Why a decoded photograph is monochrome (red-free or grey-scale, not a colour fundus
    photograph), or ``None``: a single-channel file; red = green = blue; or all its light
    in one channel (a red-free capture stored as RGB)."""
    if dec.source_mode in _MONO_MODES:
        return f"monochrome photograph (single-channel {dec.source_mode} file; red-free?)"
    a = dec.image[::4, ::4].reshape(-1, 3)
    a = a[a.max(axis=1) > MONO_MIN_LEVEL].astype(np.int16)
    if len(a) < 100:
        return None  # (nearly) black: the FOV check words that
    spread = max(float(np.abs(a[:, 0] - a[:, 1]).mean()), float(np.abs(a[:, 1] - a[:, 2]).mean()))
    if spread < MONO_SPREAD:
        return f"monochrome photograph (red = green = blue, mean difference {spread:.1f}; red-free?)"
    share = a.sum(axis=0) / max(float(a.sum()), 1.0)
    if share.max() > MONO_SHARE:
        return (f"monochrome photograph (all light in the {'red green blue'.split()[int(share.argmax())]} channel; "
                "red-free?)")
    return None


def read_image(path: str | os.PathLike, min_side: int | None = None, max_pixels: int = 150_000_000,
               max_decode_pixels: int | None = None) -> Decoded:
    """Decode ``path`` to an RGB array, at reduced size when the format allows.

    ``min_side``: the smaller side of the decoded image should stay >= this (JPEG DCT
    scaling picks the strongest 1/2, 1/4, 1/8 reduction that keeps it); ``None`` decodes
    at full size. ``max_pixels`` refuses absurdly large images (decompression bombs)
    before any pixel is decoded; ``max_decode_pixels`` refuses an image that would
    *decode* to more pixels than that (any format but a DCT-scaled JPEG decodes at full
    size), also from the header alone. Files without a photograph's suffix are refused.
    """
    p = Path(path)
    not_image = unsupported_reason(p)
    if not_image:
        raise ImageReadError(not_image)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise ImageReadError(f"{p}: cannot read file ({e.strerror or e})") from None
    if size == 0:
        raise ImageReadError(f"{p}: empty file (0 bytes)")
    im = None
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
            k = _jpeg_factor(w0, h0, min_side) if im.format == "JPEG" else 1
            decoded = -(-w0 // k) * -(-h0 // k)
            if max_decode_pixels and decoded > max_decode_pixels:
                how = f"1/{k} scale" if k > 1 else "full size"
                raise ImageReadError(
                    f"{p}: {w0}x{h0} {im.format or ''} decodes at {how} to {decoded / 1e6:.0f} MP, more than "
                    f"max_decode_pixels {max_decode_pixels / 1e6:.0f} MP (memory bound per worker; raise "
                    "preprocess.max_decode_pixels if such images are expected)")
            if im.format == "JPEG" and mode == "RGB" and _CV_RGB is not None and _orientation(im) == 1:
                im.fp.seek(0)  # the header is parsed, nothing decoded: hand the bytes to OpenCV
                arr = cv2.imdecode(np.frombuffer(im.fp.read(), np.uint8),
                                   _CV_REDUCED[k] | _CV_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
                # libjpeg scaled sizes round up; anything else (or None: a truncated or
                # corrupt file) goes through Pillow, which also words the error
                if arr is not None and arr.shape == (-(-h0 // k), -(-w0 // k), 3):
                    return Decoded(image=arr, width=w0, height=h0, scale=w0 / arr.shape[1], source_mode=mode)
            if k > 1:
                # Pillow picks the scale as (size // requested): ask for the floor size, or an
                # odd side (1411 // 706 = 1) silently decodes at full size
                im.draft("RGB" if mode in ("RGB", "YCbCr") else mode, (w0 // k, h0 // k))
            im.load()
            scale = w0 / im.size[0]
            ImageOps.exif_transpose(im, in_place=True)
            alpha = has_alpha(im) and _transparent(im)
            rgb = np.asarray(_to_rgb(im))
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:  # pragma: no cover - guard above fires first
        raise ImageReadError(f"{p}: {e}") from None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise ImageReadError(f"{p}: cannot decode image ({type(e).__name__}: {e})") from None
    finally:
        if im is not None:
            im.close()  # also on errors: no open file left behind per bad image
    # EXIF rotation by 90/270 degrees swaps the original sides too.
    hh, ww = rgb.shape[:2]
    if (ww >= hh) != (w0 >= h0) and w0 != h0:
        w0, h0 = h0, w0
    return Decoded(image=rgb, width=w0, height=h0, scale=scale, source_mode=mode, alpha=alpha)


# How each stored format is encoded (``preprocess.format``). The training copies are read
# once per epoch per image, so decode speed decides the default: at 512 px on one core
# (OpenCV, benchmarks/train_throughput.py --loader-only) JPEG q95 4:4:4 decodes in
# ~0.9-1.3 ms, 2-3x faster than this PNG (~2.7 ms) and 3-4x smaller on disk; PNG stays
# for users who need lossless copies. 4:4:4: no chroma subsampling, so thin red vessels
# and haemorrhages keep their colour resolution (q95 4:2:0 halves it).
FORMATS = {
    "jpg": "JPEG quality 95, 4:4:4 chroma (no subsampling), OpenCV/libjpeg-turbo",
    "png": "PNG, zlib level 1, RLE strategy, Up filter (lossless), OpenCV/libpng",
}


def encode_image(arr: np.ndarray, fmt: str) -> bytes:
    """Encode an RGB uint8 array in a stored format of :data:`FORMATS`."""
    bgr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if fmt == "png":
        # zlib level 1, run-length strategy, the "Up" row filter: ~6-7 ms at 512 px, the
        # size of OpenCV's default (level 1, Sub filter) and about half the time of the
        # adaptive filter choice; processed images feed training, so speed beats the
        # last 10 % of size
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1,
                                             cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
                                             cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP])
    elif fmt in ("jpg", "jpeg"):
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                             cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    else:
        raise ValueError(f"unknown output format {fmt!r} (use one of {sorted(FORMATS)})")
    if not ok:  # pragma: no cover
        raise OSError(f"{fmt} encoder failed")
    return buf.tobytes()


def write_image(arr: np.ndarray, path: str | os.PathLike, fmt: str) -> str:
    """Write an RGB uint8 array in a stored format of :data:`FORMATS`, atomically; returns
    the file's content digest (:func:`fundusfm.hashing.fast_digest_bytes`), which the QC
    table records and training checks."""
    from fundusfm.hashing import fast_digest_bytes

    data = encode_image(arr, fmt)
    atomic_write(path, lambda p: p.write_bytes(data))
    return fast_digest_bytes(data)

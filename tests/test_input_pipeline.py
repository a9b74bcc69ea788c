"""The training input pipeline: one augmentation distribution on CPU and GPU, the stored
training-copy formats round-trip through the engine's decoder and the release's."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from skimage import data as skdata

from fundusfm.preprocess.io import FORMATS, encode_image, write_image
from fundusfm.preprocess.pipeline import PreprocessSpec
from fundusfm.release.loading import model_input
from fundusfm.train.config import DEFAULT_AUGMENT
from fundusfm.train.data import CpuAugment, GpuAugment, augment_params, load_image
from fundusfm.train.sets import mix_seed

OFF = {**DEFAULT_AUGMENT, "hflip": 0, "vflip": 0, "rotation": 0, "scale_min": 1.0, "ratio": [1.0, 1.0],
       "brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}
GEOMETRY_ONLY = {**DEFAULT_AUGMENT, "brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}
COLOUR_ONLY = {**OFF, **{k: DEFAULT_AUGMENT[k] for k in ("brightness", "contrast", "saturation", "hue")}}


def retina(size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(skdata.retina()).resize((size, size), Image.BILINEAR))


def both_paths(img: np.ndarray, aug: dict, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """float HxWx3 outputs in 0..255 of the CPU path and of the GPU path run on the CPU device."""
    cpu = np.stack([CpuAugment(aug, img.shape[0])(img, s) for s in seeds]).astype(np.float64)
    x = torch.from_numpy(img.copy()).permute(2, 0, 1).float().div(255)[None].repeat(len(seeds), 1, 1, 1)
    gpu = (GpuAugment(aug)(x, seeds) * 255).permute(0, 2, 3, 1).double().numpy()
    return cpu, gpu


def test_cpu_and_gpu_paths_make_the_same_image_from_the_same_seed():
    img = retina(96)
    cpu, gpu = both_paths(img, DEFAULT_AUGMENT, list(range(40)))
    diff = np.abs(cpu - gpu)
    assert diff.mean() < 0.5 and diff.max() < 4  # uint8 rounding of warp and colour map only
    # and the draws differ between seeds: the test would not pass on an identity
    assert np.abs(cpu[0] - cpu[1]).mean() > 5


# ----------------------------------------------------------------------------- parameters from outputs

BLOBS = np.array([[-0.4, -0.35], [0.45, -0.2], [-0.1, 0.45]])  # normalised (x, y) of a red, green, blue blob


def blob_image(size: int = 96) -> np.ndarray:
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1
    img = np.zeros((size, size, 3))
    for c, (bx, by) in enumerate(BLOBS):
        img[..., c] = 255 * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * 0.05 ** 2))
    return img.round().astype(np.uint8)


def recovered_geometry(out: np.ndarray) -> dict[str, float]:
    """Area fraction, rotation, flips of one output, from where the three blobs landed."""
    size = out.shape[0]
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1
    q = np.array([[(out[..., c] * xx).sum() / out[..., c].sum(), (out[..., c] * yy).sum() / out[..., c].sum()]
                  for c in range(3)])
    # source = A @ output + t, from three correspondences
    sol = np.linalg.solve(np.hstack([q, np.ones((3, 1))]), BLOBS)
    a = sol[:2].T
    fx, fy = np.sign(a[0, 0]), np.sign(a[1, 1])
    return {"area": abs(np.linalg.det(a)), "angle": math.degrees(math.atan2(a[1, 0] * fy, a[1, 1] * fy)),
            "hflip": fx < 0, "vflip": fy < 0}


def recovered_colour(out: np.ndarray, src: np.ndarray) -> dict[str, float]:
    """Brightness, chroma gain and hue turn of one output of a flat-colour image (YIQ)."""
    from fundusfm.train.data import _YIQ

    yo, yi = _YIQ @ out.reshape(-1, 3).mean(0), _YIQ @ src.reshape(-1, 3).mean(0)
    return {"brightness": yo[0] / yi[0], "chroma": np.hypot(*yo[1:]) / np.hypot(*yi[1:]) / (yo[0] / yi[0]),
            "hue": (math.atan2(yo[2], yo[1]) - math.atan2(yi[2], yi[1])) / (2 * math.pi)}


def test_gpu_and_cpu_paths_draw_the_same_per_sample_parameter_distribution():
    n = 150
    # independent draws, as the engine seeds them: epoch 0 on one path, epoch 1 on the other
    cpu_seeds, gpu_seeds = ([mix_seed(3, epoch, i, 2) for i in range(n)] for epoch in (0, 1))
    blobs = blob_image()
    geo = {}
    for name, seeds in (("cpu", cpu_seeds), ("gpu", gpu_seeds)):
        outs = both_paths(blobs, GEOMETRY_ONLY, seeds)[0 if name == "cpu" else 1]
        geo[name] = {k: np.array([recovered_geometry(o)[k] for o in outs]) for k in ("area", "angle", "hflip", "vflip")}
    flat = np.tile(np.array([150, 90, 50], np.uint8), (32, 32, 1))
    col = {}
    for name, seeds in (("cpu", cpu_seeds), ("gpu", gpu_seeds)):
        outs = both_paths(flat, COLOUR_ONLY, seeds)[0 if name == "cpu" else 1]
        col[name] = {k: np.array([recovered_colour(o, flat)[k] for o in outs]) for k in ("brightness", "chroma", "hue")}
    for stat in ("area", "angle"):
        assert stats.ks_2samp(geo["cpu"][stat], geo["gpu"][stat]).pvalue > 0.01, stat
    for stat in ("brightness", "chroma", "hue"):
        assert stats.ks_2samp(col["cpu"][stat], col["gpu"][stat]).pvalue > 0.01, stat
    for path in ("cpu", "gpu"):
        g, c = geo[path], col[path]
        # against the configuration: rotation U(-30, 30), area U(0.8, 1), flips p=0.5, brightness U(0.8, 1.2)
        assert stats.kstest(g["angle"], stats.uniform(-30, 60).cdf).pvalue > 0.01
        assert g["area"].min() > 0.78 and g["area"].max() < 1.01 and 0.86 < g["area"].mean() < 0.94
        assert 0.38 < g["hflip"].mean() < 0.62 and 0.38 < g["vflip"].mean() < 0.62
        assert stats.kstest(c["brightness"], stats.uniform(0.8, 0.4).cdf).pvalue > 0.01
        assert np.abs(c["hue"]).max() <= 0.021 and c["hue"].std() > 0.008
        # chroma gain = contrast x saturation, both U(1 - j, 1 + j)
        assert 0.7 < c["chroma"].min() and c["chroma"].max() < 1.33 and abs(c["chroma"].mean() - 1) < 0.03
    # the recovered parameters are the drawn ones, sample by sample
    drawn = augment_params(GEOMETRY_ONLY, gpu_seeds)
    np.testing.assert_allclose(geo["gpu"]["angle"], drawn["angle"], atol=1.0)
    np.testing.assert_array_equal(geo["gpu"]["hflip"], drawn["hflip"])


def test_augment_params_are_a_function_of_the_seed_only():
    a, b = augment_params(DEFAULT_AUGMENT, [5, 6, 7]), augment_params(DEFAULT_AUGMENT, [7])
    np.testing.assert_array_equal(a["theta"][2], b["theta"][0])
    assert not np.allclose(a["theta"][0], a["theta"][1])


def test_both_paths_are_the_identity_when_augmentation_is_off():
    img = retina(64)
    cpu, gpu = both_paths(img, OFF, [1, 2])
    np.testing.assert_array_equal(cpu, np.stack([img, img]))
    np.testing.assert_allclose(gpu, np.stack([img, img]), atol=1e-3)


def test_gpu_augment_rejects_a_seed_count_that_is_not_the_batch():
    with pytest.raises(ValueError, match="3 seeds for a batch of 2"):
        GpuAugment(DEFAULT_AUGMENT)(torch.rand(2, 3, 8, 8), [1, 2, 3])


# ----------------------------------------------------------------------------- stored formats


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_stored_format_round_trips_through_the_engine_and_the_release(fmt, tmp_path):
    img = retina(128)
    path = tmp_path / f"x.{fmt}"
    write_image(img, path, fmt)
    engine = load_image(path, 128).permute(1, 2, 0).numpy()
    # the release re-encodes in memory in the spec's format and reads with the same decoder
    release = model_input(img, PreprocessSpec(size=128, format=fmt), 128).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(engine, release)
    err = np.abs(engine.astype(int) - img)
    if fmt == "png":
        assert err.max() == 0  # lossless
    else:
        assert err.mean() < 1.5 and np.percentile(err, 99) <= 8  # q95 4:4:4
    # 4:4:4: a one-pixel red line keeps its colour (4:2:0 would smear it over two rows)
    line = np.zeros((64, 64, 3), np.uint8)
    line[32, :, 0] = 200
    back = load_image(io.BytesIO(encode_image(line, fmt)), 64).permute(1, 2, 0).numpy().astype(int)
    assert back[32, 8:56, 0].min() > 170 and back[31, 8:56, 0].max() < 40


def test_default_stored_format_is_the_fast_jpeg():
    assert PreprocessSpec().format == "jpg"
    assert "4:4:4" in FORMATS["jpg"] and "lossless" in FORMATS["png"]


@pytest.mark.slow
def test_gpu_check_smoke_runs_end_to_end_on_cpu():
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(repo / "benchmarks" / "gpu_check.sh"), "--smoke"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout.split("gpu_check on cpu (smoke)")[1]
    for feed in ("eager, engine", "compile, engine", "eager, timm loader"):
        assert feed in table
    assert "test_vit" in table

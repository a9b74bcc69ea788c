"""Speed and FOV accuracy of ``fundusfm preprocess`` on camera-sized JPEGs.

Builds JPEGs (q95) from ``skimage.data.retina()`` pasted on black camera frames —
4288x2848 (IDRiD-like, and one with the circle cut top and bottom), 2144x1424 (RFMiD-like),
1634x1634 — with the true circle known from the paste (the source circle is measured once on
the full-resolution original), or reads the peer benchmark's set with ``--images DIR``
(DIR/truth.json as written by /work/shared/bench/peer_preprocess_bench.py), then prints

- images/second per core for the whole step — exactly what a worker does per image
  (``pipeline._work``: read, decode, detect, crop, resize, mask, quality, encode, write the
  image and its QC-cache entry), each repeat to a new file as in a real run — in this
  process pinned to one core (``--cpu``) with one thread, after the same per-process setup
  as the stage's workers (``pipeline.init_worker``; ``--no-tune`` leaves glibc's allocator at
  its defaults). Several runs of ``--repeats`` images each: the median run and the best run
  (wall clock), and the CPU time per image (process CPU clock: less sensitive to other jobs
  on a shared machine);
- the floor: the same decode (OpenCV, DCT-scaled) + centre square crop + resize + encode +
  write with no detection and no quality;
- the circle centre / radius error against the truth (targets: <= 1.5 px, <= 0.2 %);
- wall-clock images/second of ``preprocess_many`` with N workers (scaling, incl. pool start),
  unpinned;
- the load average next to each section (``os.getloadavg``): on a shared machine the wall
  clock figures move with it.

- with ``--baseline REV`` (e.g. ``main``): the same per-core figures of the code at git
  revision REV (``git archive`` of its ``src/`` into a temporary folder, run in a child
  process on the same core), alternating with this tree's code ``--rounds`` times in the
  same run, and the ratio this/baseline of each round (issue 15: the better FOV fallback
  and blur measure may cost at most 10 %); "cpu min" compares the fastest image of each
  (the least disturbed by other jobs on a shared machine).

    python benchmarks/preprocess.py [--images DIR] [--formats jpg,png] [--workers 1,2]
    python benchmarks/preprocess.py --baseline main --rounds 3 --formats png --workers ''
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_k, "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

# name, canvas (w, h), FOV diameter, centre offset (dx, dy) from the canvas centre
SPECS = [
    ("idrid_4288x2848", (4288, 2848), 2720, (60, -25)),
    ("idrid_cut_4288x2848", (4288, 2848), 3300, (0, 0)),
    ("rfmid_2144x1424", (2144, 1424), 1360, (-30, 12)),
    ("square_1634x1634", (1634, 1634), 1560, (14, 22)),
]
TARGET_IPS, TARGET_CENTRE_PX, TARGET_RADIUS_PCT = 35.0, 1.5, 0.2
TARGET_FLOOR_RATIO = 0.6  # issue 15: >= 60 % of the floor, same output format


def build_set(out: Path) -> list[dict]:
    """Write the benchmark JPEGs and return their truth circles."""
    from skimage import data

    from fundusfm.preprocess.fov import detect_fov

    src = data.retina()
    t0 = detect_fov(src)  # full-resolution source circle; mapped through the known paste
    sw = src.shape[1]
    pil = Image.fromarray(src)
    entries = []
    for name, (w, h), diam, (dx, dy) in SPECS:
        n = int(round(sw * diam / (2 * t0.r)))
        s = n / sw
        scaled = pil.resize((n, n), Image.LANCZOS)
        fcx, fcy = (t0.cx + 0.5) * s - 0.5, (t0.cy + 0.5) * s - 0.5
        ox, oy = int(round(w / 2 + dx - fcx)), int(round(h / 2 + dy - fcy))
        canvas = Image.new("RGB", (w, h))
        canvas.paste(scaled, (ox, oy))
        canvas.save(out / f"{name}.jpg", quality=95)
        entries.append(dict(name=name, file=f"{name}.jpg", w=w, h=h,
                            truth=dict(cx=fcx + ox, cy=fcy + oy, r=t0.r * s)))
    return entries


def load() -> str:
    return "load avg " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _floor_step(path: str, out: Path, fmt: str, size: int) -> None:
    """Decode at reduced size + centre square crop + resize + encode + write: no detection."""
    import cv2

    from fundusfm.preprocess.io import _CV_REDUCED, _CV_RGB, _jpeg_factor, write_image

    with Image.open(path) as im:
        w0, h0 = im.size
    a = cv2.imdecode(np.fromfile(path, np.uint8), _CV_REDUCED[_jpeg_factor(w0, h0, size)] | _CV_RGB)
    h, w = a.shape[:2]
    s = min(h, w)
    sq = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    write_image(cv2.resize(sq, (size, size), interpolation=cv2.INTER_AREA), out, fmt)


def time_runs(fn, runs: int, repeats: int) -> dict:
    """``runs`` batches of ``repeats`` calls of ``fn(i)``; img/s of the median and the best
    batch (wall clock) and of the median CPU time per call."""
    fn(-1)  # warm-up (imports, caches)
    run_ips, cpu = [], []
    i = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(repeats):
            c0 = time.process_time()
            fn(i)
            cpu.append(time.process_time() - c0)
            i += 1
        run_ips.append(repeats / (time.perf_counter() - t0))
    return dict(median=statistics.median(run_ips), best=max(run_ips), worst=min(run_ips),
                cpu=1 / statistics.median(cpu), cpu_best=1 / min(cpu))


def per_core(entries, folder: Path, spec, runs: int, repeats: int, tmp: Path):
    from fundusfm.preprocess.pipeline import _work

    spec_d = _asdict(spec)
    rows = []
    for e in entries:
        path = str(folder / e["file"])
        out = Path(tempfile.mkdtemp(prefix="run_", dir=tmp))
        first = _work((f"{e['name']}_check", path, spec_d, str(out), "bench"))

        def step(i, path=path, out=out, name=e["name"]):
            _work((f"{name}_{i}", path, spec_d, str(out), "bench"))

        res = time_runs(step, runs, repeats)
        fout = Path(tempfile.mkdtemp(prefix="floor_", dir=tmp))
        floor = time_runs(lambda i, path=path, fout=fout: _floor_step(path, fout / f"{i}.{spec.format}",
                                                                       spec.format, spec.size), runs, repeats)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(fout, ignore_errors=True)
        tr = e["truth"]
        if first["fov_cx"] is not None:
            ce = math.hypot(first["fov_cx"] - tr["cx"], first["fov_cy"] - tr["cy"])
            re = 100 * (first["fov_r"] - tr["r"]) / tr["r"]
        else:
            ce = re = math.nan
        rows.append(dict(name=e["name"], res=res, floor=floor, ce=ce, re=re,
                         status=f"{first['status']}/{first['quality']}"))
    return rows


def _asdict(spec) -> dict:
    from dataclasses import asdict

    return asdict(spec)


def scaling(entries, folder: Path, spec, workers: list[int], n_images: int, tmp: Path):
    from fundusfm.preprocess.pipeline import preprocess_many

    big = [e for e in entries if e["w"] == 4288 and e["h"] == 2848][0]
    inputs = [(f"img{i:04d}", str(folder / big["file"])) for i in range(n_images)]
    res = []
    for n in workers:
        out = Path(tempfile.mkdtemp(prefix="scale_", dir=tmp))
        t = time.perf_counter()
        preprocess_many(inputs, out, spec, workers=n, progress=False)
        res.append((n, n_images / (time.perf_counter() - t)))
        shutil.rmtree(out, ignore_errors=True)
    return big["name"], res


def compare_baseline(a, entries, folder: Path, tmp: Path, cpu) -> None:
    """This tree beside git revision ``a.baseline`` on the 4288x2848 image, alternating."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    base = tmp / "baseline"
    base.mkdir()
    arch = subprocess.run(["git", "-C", str(root), "archive", a.baseline, "src"],
                          check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=arch, check=True)
    big = [e for e in entries if e["w"] == 4288 and e["h"] == 2848][0]["name"]
    fmt = a.formats.split(",")[0]
    images = ["--images", str(folder)] if a.images else []
    if not a.images:  # the child reads the same files
        (folder / "truth.json").write_text(json.dumps({"images": entries}))
        images = ["--images", str(folder)]

    def child(pythonpath: Path) -> dict:
        cmd = [sys.executable, str(Path(__file__).resolve()), *images, "--only", big, "--formats", fmt,
               "--runs", str(a.runs), "--repeats", str(a.repeats), "--size", str(a.size),
               "--normalise", a.normalise, "--workers", ""]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        env = dict(os.environ, PYTHONPATH=str(pythonpath))
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        return json.loads(out.strip().splitlines()[-1])

    print(f"this tree vs {a.baseline} on {big}, {fmt} output, per core (CPU {cpu}); "
          f"{a.rounds} alternating rounds of {a.runs} runs x {a.repeats} images  {load()}")
    print(f"{'round':>5s} {'this med':>8s} {'cpu':>6s} {'base med':>8s} {'cpu':>6s} {'floor med':>9s} | "
          f"{'this/base':>9s} {'(cpu)':>6s} {'(cpu min)':>9s} {'this/floor':>10s} {'(cpu)':>6s} | "
          f"this ce/re  base ce/re")
    ratios = []
    for i in range(a.rounds):
        new = child(root / "src")
        old = child(base / "src")
        x, o, f = new["res"], old["res"], new["floor"]
        ratios.append((x["median"] / o["median"], x["cpu"] / o["cpu"], x["median"] / f["median"], x["cpu"] / f["cpu"],
                       x["cpu_best"] / o["cpu_best"]))
        print(f"{i:5d} {x['median']:8.1f} {x['cpu']:6.1f} {o['median']:8.1f} {o['cpu']:6.1f} {f['median']:9.1f} | "
              f"{ratios[-1][0]:9.3f} {ratios[-1][1]:6.3f} {ratios[-1][4]:9.3f} {ratios[-1][2]:10.3f} "
              f"{ratios[-1][3]:6.3f} | {new['ce']:.2f}/{new['re']:+.3f}%  {old['ce']:.2f}/{old['re']:+.3f}%")
    med = [statistics.median(r[j] for r in ratios) for j in range(5)]
    print(f"median ratios: this/{a.baseline} {med[0]:.3f} (cpu {med[1]:.3f}, cpu min {med[4]:.3f}); "
          f"this/floor {med[2]:.3f} (cpu {med[3]:.3f})  {load()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", help="use this set (DIR/truth.json as written by the peer benchmark)")
    ap.add_argument("--formats", default="jpg,png", help="output formats to time (comma list of jpg, png)")
    ap.add_argument("--normalise", default="none")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per image (median and best reported)")
    ap.add_argument("--repeats", type=int, default=12, help="images per run")
    ap.add_argument("--cpu", type=int, default=None, help="core to pin to (default: the last allowed one)")
    ap.add_argument("--no-tune", action="store_true", help="leave glibc's allocator at its defaults")
    ap.add_argument("--workers", default="1,2", help="comma list of worker counts for the scaling run ('' = skip)")
    ap.add_argument("--scaling-images", type=int, default=64)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--baseline", help="git revision to time beside this tree (per core, 4288x2848 only)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating this/baseline rounds with --baseline")
    ap.add_argument("--only", help=argparse.SUPPRESS)  # child mode: time only this image, print JSON
    a = ap.parse_args()

    from fundusfm.preprocess.pipeline import PreprocessSpec, init_worker

    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cpu = a.cpu if a.cpu is not None else (max(allowed) if allowed else None)
    if cpu is not None and allowed is not None:
        os.sched_setaffinity(0, {cpu})
    init_worker(tune_memory=not a.no_tune)
    tmp = Path(tempfile.mkdtemp(prefix="ppbench_"))
    if a.images:
        folder = Path(a.images)
        entries = json.loads((folder / "truth.json").read_text())["images"]
    else:
        folder = tmp
        entries = build_set(tmp)
    if a.only:  # child of --baseline: one image, figures as JSON on the last line
        e = [x for x in entries if x["name"] == a.only]
        spec = PreprocessSpec(format=a.formats.split(",")[0], normalise=a.normalise, size=a.size)
        r = per_core(e, folder, spec, a.runs, a.repeats, tmp)[0]
        shutil.rmtree(tmp, ignore_errors=True)
        print(json.dumps(r, default=float))
        return
    if a.baseline:
        compare_baseline(a, entries, folder, tmp, cpu)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    report = dict(cpu=cpu, tuned_allocator=not a.no_tune, runs=a.runs, repeats=a.repeats, results=[])
    print(f"per core: pinned to CPU {cpu}, 1 thread, allocator {'default' if a.no_tune else 'tuned (init_worker)'}; "
          f"{a.runs} runs x {a.repeats} images each; size {a.size}, normalise {a.normalise}")
    for fmt in [f for f in a.formats.split(",") if f]:
        spec = PreprocessSpec(format=fmt, normalise=a.normalise, size=a.size)
        print(f"\n[{fmt} output]  {load()}")
        print(f"{'image':26s} {'img/s median':>12s} {'best':>6s} {'worst':>6s} {'cpu':>6s} | "
              f"{'floor med':>9s} {'best':>6s} {'cpu':>6s} | {'/floor':>6s} {'(cpu)':>6s} | "
              f"{'centre err px':>13s} {'radius err %':>12s}  status")
        for r in per_core(entries, folder, spec, a.runs, a.repeats, tmp):
            x, f = r["res"], r["floor"]
            print(f"{r['name']:26s} {x['median']:12.1f} {x['best']:6.1f} {x['worst']:6.1f} {x['cpu']:6.1f} | "
                  f"{f['median']:9.1f} {f['best']:6.1f} {f['cpu']:6.1f} | {x['median'] / f['median']:6.2f} "
                  f"{x['cpu'] / f['cpu']:6.2f} | {r['ce']:13.2f} {r['re']:+12.3f}  {r['status']}")
            report["results"].append(dict(format=fmt, **r))
        print(f"({load()})")
    big = [r for r in report["results"] if r["name"].startswith("idrid_4288")]
    ok_acc = all(r["ce"] <= TARGET_CENTRE_PX and abs(r["re"]) <= TARGET_RADIUS_PCT for r in report["results"])
    speeds = ", ".join("{} {}: median {:.1f}, best {:.1f}, cpu {:.1f}".format(
        r["name"], r["format"], r["res"]["median"], r["res"]["best"], r["res"]["cpu"]) for r in big)
    fl = ", ".join("{} {}: median {:.2f}, cpu {:.2f}".format(
        r["name"], r["format"], r["res"]["median"] / r["floor"]["median"], r["res"]["cpu"] / r["floor"]["cpu"])
        for r in big)
    print(f"\nthis/floor on 4288x2848 (target >= {TARGET_FLOOR_RATIO:g}): {fl}")
    print(f"targets: >= {TARGET_IPS:g} img/s per core on 4288x2848 ({speeds}); "
          f"centre err <= {TARGET_CENTRE_PX} px and radius err <= {TARGET_RADIUS_PCT} % on every image: "
          f"{'yes' if ok_acc else 'NO'}")
    ws = [int(x) for x in a.workers.split(",") if x]
    if ws:
        if allowed is not None:
            os.sched_setaffinity(0, allowed)  # the workers inherit the affinity
        spec = PreprocessSpec(format=a.formats.split(",")[0], normalise=a.normalise, size=a.size)
        print(f"\nscaling: {a.scaling_images} images via preprocess_many, {spec.format} output "
              f"(wall clock incl. pool start, {len(allowed or [])} CPUs allowed)  {load()}")
        name, res = scaling(entries, folder, spec, ws, a.scaling_images, tmp)
        base = res[0][1]
        for n, ips in res:
            print(f"  {name} workers={n}: {ips:6.1f} img/s  (x{ips / base:.2f})")
        report["scaling"] = res
        print(f"({load()})")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1, default=float))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

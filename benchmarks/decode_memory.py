"""Peak memory of one preprocessing worker per image kind (bounded decoding, issue 23).

Each case runs ``process_image`` on one file in a fresh process (one worker's whole job
for that image: decode, FOV, crop, quality) and reports its peak resident memory
(``VmHWM``) beside a baseline process that only imports the same modules, so the
figure is what the image costs. Cases: a 12000x12000 PNG (420 KB on disk, under the
150 MP bomb guard) with the default decode limit (refused from its header) and with the
limit raised (decoded at full size, what the issue measured), a 12000x12000 JPEG
(DCT-scaled), and the cameras' usual sizes.

    OMP_NUM_THREADS=1 python benchmarks/decode_memory.py [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# VmHWM (this process's own peak, reset at exec; ru_maxrss would carry the parent's over)
CHILD = r"""
import json, sys
from fundusfm.preprocess.pipeline import PreprocessSpec, init_worker, process_image
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
init_worker()
path, limit = sys.argv[1], int(sys.argv[2])
base = hwm()
row = {"status": "baseline", "reason": ""}
if path != "-":
    row, _ = process_image(path, PreprocessSpec(size=512, max_decode_pixels=limit))
print(json.dumps({"peak_mb": hwm(), "imports_mb": base, "status": row["status"],
                  "reason": (row.get("reason") or "")[:90]}))
"""


def make_images(d: Path) -> dict[str, Path]:
    import numpy as np
    from PIL import Image, ImageDraw

    out = {}
    for name, (w, h), fmt in (("png_12000", (12000, 12000), "PNG"), ("jpeg_12000", (12000, 12000), "JPEG"),
                              ("jpeg_4288x2848", (4288, 2848), "JPEG"), ("png_4288x2848", (4288, 2848), "PNG"),
                              ("png_6000x4000", (6000, 4000), "PNG")):
        im = Image.new("RGB", (w, h))
        r = int(min(w, h) * 0.45)
        ImageDraw.Draw(im).ellipse((w // 2 - r, h // 2 - r, w // 2 + r, h // 2 + r), fill=(170, 80, 40))
        if w <= 6000:  # some texture on the camera-sized ones (the large ones stay tiny on disk, as in the issue)
            a = np.asarray(im).copy()
            a[::7, ::5] = (120, 60, 30)
            im = Image.fromarray(a)
        p = d / f"{name}.{'png' if fmt == 'PNG' else 'jpg'}"
        im.save(p, fmt, **({"quality": 90} if fmt == "JPEG" else {"compress_level": 6}))
        out[name] = p
    return out


def measure(path: str, limit: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", CHILD, path, str(limit)], capture_output=True, text=True, env=env,
                       timeout=900)
    if p.returncode:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=None, help="folder for the test images (default: a temporary one)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="fundusfm-decode-"))
    work.mkdir(parents=True, exist_ok=True)
    images = make_images(work)
    default = 40_000_000
    base = measure("-", default)
    print(f"load {os.getloadavg()[0]:.1f}; baseline (imports only): peak {base['peak_mb']:.0f} MB")
    rows = []
    cases = [(k, v, default) for k, v in images.items()] + [("png_12000 (limit raised to 150 MP)",
                                                              images["png_12000"], 150_000_000)]
    for name, path, limit in cases:
        r = measure(str(path), limit)
        r.update(case=name, file_kb=round(path.stat().st_size / 1024), limit_mp=limit // 1_000_000,
                 over_baseline_mb=round(r.get("peak_mb", 0) - base["peak_mb"]))
        rows.append(r)
        print(f"{name:<38} {r['file_kb']:>7} KB  limit {r['limit_mp']:>3} MP  peak {r.get('peak_mb', 0):7.0f} MB "
              f"(+{r['over_baseline_mb']:5d} MB)  {r.get('status', r.get('error'))}  {r.get('reason', '')[:60]}")
    if a.json:
        Path(a.json).write_text(json.dumps({"baseline": base, "cases": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The same training output gives the same release bytes and digest (issue 23): the
weights' safetensors header is written with sorted metadata (the library orders it at
random), so two exports, or the release of two identical runs, match byte for byte."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_release import SIZE, make_run  # noqa: E402

from fundusfm.preprocess.pipeline import PreprocessSpec  # noqa: E402
from fundusfm.release.export import export  # noqa: E402

torch.set_num_threads(1)


def test_the_same_training_output_gives_the_same_release_bytes(tmp_path):
    run = make_run(tmp_path, "timm")
    spec = tmp_path / "preprocess_spec.json"
    spec.write_text(json.dumps(asdict(PreprocessSpec(size=SIZE))))
    releases = [export(run, tmp_path / f"r{i}", preprocess_spec=spec, n_boot=0) for i in range(4)]
    files = [{p.name: p.read_bytes() for p in sorted(r.iterdir())} for r in releases]
    assert all(f == files[0] for f in files[1:]), [sorted(k for k in f if f[k] != files[0][k]) for f in files[1:]]
    header = (releases[0] / "model.safetensors").read_bytes()
    n = int.from_bytes(header[:8], "little")
    meta = json.loads(header[8:8 + n])["__metadata__"]
    assert list(meta) == sorted(meta)

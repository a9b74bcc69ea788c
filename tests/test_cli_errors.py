"""`fundusfm train` and `fundusfm predict` fail on bad input with one clear line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_train_helpers import BINARY_TASK, make_task_table, tiny_hparams  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _fundusfm(*args: str, cwd: Path, capsys=None) -> subprocess.CompletedProcess:
    """The ``fundusfm`` command: in this process (``capsys`` given, fast) or as a real one."""
    if capsys is not None:
        from fundusfm.cli import main

        capsys.readouterr()
        rc = main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out.out, out.err)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "fundusfm.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _train(table: Path, out: Path, init: str = "random") -> list[str]:
    return ["train", "--table", str(table), "--fold", "0", "--task-json", BINARY_TASK, "--init", init,
            "--hparams-json", tiny_hparams(epochs=1), "--out", str(out), "--device", "cpu", "--workers", "0"]


def _one_clear_line(p: subprocess.CompletedProcess, prog: str, *needles: str) -> None:
    assert p.returncode == 1, (p.returncode, p.stderr[-2000:])
    err = [line for line in p.stderr.splitlines() if line.startswith(f"fundusfm {prog}: ")]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert len(err) == 1, p.stderr[-2000:]
    for needle in needles:
        assert needle in err[0], err[0]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return make_task_table(tmp_path_factory.mktemp("cli"), n=24, n_external=0)


def test_train_missing_checkpoint_is_one_line_from_the_real_command(table, tmp_path):
    p = _fundusfm(*_train(table, tmp_path / "out", "checkpoint:nowhere.safetensors"), cwd=tmp_path)
    _one_clear_line(p, "train", "checkpoint nowhere.safetensors does not exist")


def test_train_corrupt_safetensors_checkpoint_is_one_line(table, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json header")
    p = _fundusfm(*_train(table, tmp_path / "out", f"checkpoint:{bad}"), cwd=tmp_path, capsys=capsys)
    _one_clear_line(p, "train", "bad.safetensors is not a readable safetensors file")


def test_train_missing_table_is_one_line(tmp_path, capsys):
    p = _fundusfm(*_train(tmp_path / "absent.csv", tmp_path / "out"), cwd=tmp_path, capsys=capsys)
    _one_clear_line(p, "train", "FileNotFoundError", "absent.csv")


def test_train_missing_image_names_the_file_row(table, tmp_path, capsys):
    df = pd.read_csv(table)
    df.loc[0, "image"] = str(tmp_path / "gone.png")
    bad = tmp_path / "task.csv"
    df.to_csv(bad, index=False)
    p = _fundusfm(*_train(bad, tmp_path / "out"), cwd=tmp_path, capsys=capsys)
    _one_clear_line(p, "train", "row 2 (train) image", "gone.png")  # the first data row is row 2 of the file


def test_train_missing_column_is_one_line(table, tmp_path, capsys):
    bad = tmp_path / "task.csv"
    pd.read_csv(table).drop(columns="abnormal").to_csv(bad, index=False)
    p = _fundusfm(*_train(bad, tmp_path / "out"), cwd=tmp_path, capsys=capsys)
    _one_clear_line(p, "train", "label column(s) ['abnormal'] not found")


def test_predict_missing_or_broken_release_is_one_line(tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"")
    p = _fundusfm("predict", "--model", str(tmp_path / "norelease"), str(photo), "--out", str(tmp_path / "p.csv"),
                  "--device", "cpu", cwd=tmp_path, capsys=capsys)
    _one_clear_line(p, "predict", "config.json missing")
    rel = tmp_path / "rel"
    rel.mkdir()
    (rel / "config.json").write_text('{"fundusfm": {"format": "fundusfm-release"')
    p = _fundusfm("predict", "--model", str(rel), str(photo), "--out", str(tmp_path / "p.csv"), "--device", "cpu",
                  cwd=tmp_path, capsys=capsys)
    _one_clear_line(p, "predict", "config.json: not valid JSON")
    assert not (tmp_path / "p.csv").exists()

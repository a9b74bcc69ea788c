"""`fundusfm train` and `fundusfm predict` fail on bad input with one clear line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import shutil
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


# ----------------------------------------------------------------------------- storage that refuses writes (issue 23)

def _mount_tmpfs(where: Path, *options: str) -> bool:
    """A small real file system (tmpfs) at ``where``: root can mount one (CI runs as root)."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a full disk: a 256 KiB tmpfs already filled. Without the right to
    mount, a process file-size limit (EFBIG) stands in for it (same handling)."""
    where = tmp_path / "full"
    mounted = _mount_tmpfs(where, "size=256k")
    if mounted:
        try:
            with open(where / "filler", "wb") as fh:
                fh.write(b"\0" * (1 << 20))
        except OSError:
            pass
    yield where, None if mounted else 64 * 1024
    if mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fundusfm_limited(*args: str, cwd: Path, fsize: int | None) -> subprocess.CompletedProcess:
    import resource
    import signal

    def limit():
        if fsize:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "fundusfm.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, preexec_fn=limit)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    from test_preprocess import fundus_on_frame

    d = tmp_path_factory.mktemp("photos")
    for i in range(3):
        fundus_on_frame(dx=8 * i).save(d / f"p{i}.jpg", quality=90)
    return d


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from test_release import make_release

    return make_release(tmp_path_factory.mktemp("rel"), "timm")


@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_the_file_in_every_writing_verb(full_disk, table, photo_dir, release, tmp_path):
    where, fsize = full_disk
    ran = {
        "preprocess": [str(photo_dir), "--out", str(where / "pre"), "--size", "64", "--no-progress"],
        "predict": [str(photo_dir), "--model", str(release), "--out", str(where / "pred.csv"), "--no-progress"],
        "export": ["--run-dir", str(release.parent / "run_timm_resnet10t"), "--out", str(where / "release"),
                   "--preprocess-spec", str(release.parent / "preprocess_spec.json"), "--n-boot", "0"],
        "train": _train(table, where / "run")[1:],
    }
    for verb, args in ran.items():
        p = _fundusfm_limited(verb, *args, cwd=tmp_path, fsize=fsize)
        why = "no space left on the device" if fsize is None else "file too large"
        _one_clear_line(p, verb, f"cannot write {where}", why)
        leftovers = [f.name for f in where.rglob("*") if f.is_file() and ".tmp" in f.name]
        assert not leftovers, (verb, leftovers)


@pytest.mark.slow
def test_a_read_only_folder_is_one_line_naming_it(tmp_path, photo_dir):
    where = tmp_path / "ro"
    if _mount_tmpfs(where, "size=1m", "ro"):
        why = "read-only file system"
    else:  # not root: a folder without write permission
        where.chmod(0o555)
        why = "permission denied"
    try:
        p = _fundusfm("preprocess", str(photo_dir), "--out", str(where / "pre"), "--size", "64", "--no-progress",
                      cwd=tmp_path)
        _one_clear_line(p, "preprocess", str(where / "pre"), why)
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


@pytest.mark.slow
def test_a_folder_without_permission_is_one_line_naming_it(tmp_path, photo_dir):
    """A folder the process may not write to: immutable (chattr +i stops root too), or
    without write permission for another user."""
    where = tmp_path / "locked"
    where.mkdir()
    immutable = subprocess.run(["chattr", "+i", str(where)], capture_output=True).returncode == 0
    if not immutable:
        where.chmod(0o555)
        if os.geteuid() == 0:
            pytest.skip("root on a file system without chattr: no folder refuses root")
    try:
        p = _fundusfm("preprocess", str(photo_dir), "--out", str(where / "pre"), "--size", "64", "--no-progress",
                      cwd=tmp_path)
        _one_clear_line(p, "preprocess", str(where / "pre"), "operation not permitted" if immutable else
                        "permission denied")
    finally:
        subprocess.run(["chattr", "-i", str(where)], capture_output=True)
        where.chmod(0o755)

"""Output files: complete or absent, permissions as the umask says, no temporary files left
behind (fundusfm.fileio), and what a training job writes (device, history) for the cases
issue 12 / 16 name: ``--gpus 0`` on a GPU host, no validation set, a umask of 002."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_train_helpers import BINARY_TASK, make_task_table, tiny_hparams  # noqa: E402

from fundusfm import fileio  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def umask002():
    old = os.umask(0o002)
    yield 0o664
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_output_mode_follows_the_umask(umask002):
    assert fileio.output_mode() == 0o664
    os.umask(0o077)
    assert fileio.output_mode() == 0o600


def test_atomic_write_gives_umask_permissions_even_to_0600_writers(tmp_path, umask002):
    import tempfile

    def like_mkstemp(p: Path) -> None:  # safetensors and mkstemp create 0600 files
        p.write_text("x")
        os.chmod(p, 0o600)

    out = fileio.atomic_write(tmp_path / "a" / "b.txt", like_mkstemp)
    assert out.read_text() == "x" and mode(out) == umask002
    fd, name = tempfile.mkstemp(dir=tmp_path)
    os.close(fd)
    assert mode(Path(name)) == 0o600  # what the writers did before


def test_a_failed_write_leaves_no_temporary_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "t.json"
    fileio.write_json(target, {"v": 1})

    def boom(p: Path) -> None:
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        fileio.atomic_write(target, boom)
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def test_all_or_nothing_writes_touch_no_target_when_one_fails(tmp_path):
    def boom(p: Path) -> None:
        raise OSError("no space left")

    with pytest.raises(OSError):
        fileio.atomic_write_many([(tmp_path / "a.txt", lambda p: p.write_text("a")), (tmp_path / "b.txt", boom)])
    assert list(tmp_path.iterdir()) == []


WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {src!r})
    import signal
    from fundusfm import cli, fileio
    signal.signal(signal.SIGTERM, cli._terminate)  # what fundusfm.cli.main installs for every verb
    def slow(p):
        p.write_text("partial")
        print("writing", flush=True)
        time.sleep(60)
    fileio.atomic_write({target!r}, slow)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_killed_writer_leaves_no_temporary_file(tmp_path, sig):
    target = tmp_path / "out.csv"
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(src=str(SRC), target=str(target))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    assert [p.name for p in tmp_path.iterdir()] == [f".out.csv.tmp{proc.pid}"]
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert list(tmp_path.iterdir()) == []


def test_a_sigkilled_writers_leftover_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "out.csv"
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(src=str(SRC), target=str(target))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait(timeout=30)
    assert [p.name for p in tmp_path.iterdir()] == [f".out.csv.tmp{proc.pid}"]  # SIGKILL: nothing can run
    other = tmp_path / f".out.csv.tmp{os.getpid()}x"  # not a temporary's name: not ours to remove
    other.write_text("keep")
    live = tmp_path / f".other.csv.tmp{os.getppid()}"  # a live process's temporary: kept
    live.write_text("in progress")
    fileio.write_text(target, "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, live.name, "out.csv"])


# ----------------------------------------------------------------------------- training outputs


def _train_args(table: Path, out: Path, gpus: str = "0") -> list[str]:
    return ["--table", str(table), "--fold", "0", "--fraction", "1.0", "--seed", "1", "--task-json", BINARY_TASK,
            "--init", "random", "--hparams-json", tiny_hparams(epochs=1), "--out", str(out), "--workers", "0",
            "--gpus", gpus]


@pytest.mark.slow
def test_gpus_0_trains_on_the_cpu_when_cuda_is_reported_available(tmp_path, monkeypatch, umask002):
    """Snakemake gives a job gpu=0 on a GPU host: it must not land on cuda:0. Only the
    availability probe (fundusfm.models.io.cuda_available, the one every device choice
    asks) is mocked; any CUDA call beyond it would fail on this machine.
    The outputs, model.safetensors included, get the umask's permissions."""
    from fundusfm.models import io as model_io
    from fundusfm.train.cli import train_main

    table = make_task_table(tmp_path, n=24)
    monkeypatch.setattr(model_io, "cuda_available", lambda: True)
    assert model_io.resolve_device("auto").type == "cuda"  # what --gpus 0 used to get
    out = tmp_path / "out"
    assert train_main(_train_args(table, out)) == 0
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["device"] == "cpu"
    for name in ("model.safetensors", "model.json", "history.csv", "train_config.json", "predictions_test.csv"):
        assert mode(out / name) == umask002, name
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    assert train_main(_train_args(table, tmp_path / "o2") + ["--device", "cuda"]) == 2  # contradicts --gpus 0
    assert train_main(_train_args(table, tmp_path / "o3", gpus="-1")) == 2


@pytest.mark.slow
def test_without_a_validation_set_history_files_no_training_loss_as_a_validation_metric(tmp_path):
    from fundusfm.train.cli import train_main

    table = make_task_table(tmp_path, n=24)
    df = pd.read_csv(table, dtype=str, keep_default_na=False)
    df.loc[df["fold0"] == "val", "fold0"] = "train"
    df.to_csv(table, index=False)
    out = tmp_path / "out"
    assert train_main(_train_args(table, out)) == 0
    hist = pd.read_csv(out / "history.csv")
    assert "val_auroc" in hist.columns and hist["val_auroc"].isna().all() and hist["val_loss"].isna().all()
    assert hist["train_loss"].notna().all()


def test_summary_verb_logs_through_the_dispatcher(tmp_path):
    """``fundusfm summary`` had no logging set up: its closing line never showed."""
    tables = tmp_path / "tables"
    tables.mkdir()
    # a table from before issue 18 (no adaptation column: fine-tunes), and one with both
    # adaptations beside its companions, which are no study tables
    pd.DataFrame({"set": ["test"], "init": ["random"], "fraction": [1.0], "auroc__mean": [0.7]}).to_csv(
        tables / "t.csv", index=False)
    pd.DataFrame({"set": ["test", "test"], "init": ["big", "big"], "adaptation": ["finetune", "linear"],
                  "fraction": [0.1, 0.1], "auroc__mean": [0.8, 0.75]}).to_csv(tables / "u.csv", index=False)
    pd.DataFrame({"init": ["big"], "arch": ["resnet10t"], "params": [4.9e6]}).to_csv(tables / "u_models.csv",
                                                                                   index=False)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    res = subprocess.run([sys.executable, "-m", "fundusfm.cli", "summary", "--tables", str(tables), "--out-json",
                          str(tmp_path / "m.json"), "--out-csv", str(tmp_path / "m.csv")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "INFO fundusfm.evaluate: summary of 3 table rows" in res.stderr
    nest = json.loads((tmp_path / "m.json").read_text())
    assert sorted(nest) == ["t", "u"]
    assert nest["t"]["test"]["random"]["finetune"]["frac1"] == {"auroc": 0.7}
    assert nest["u"]["test"]["big"] == {"finetune": {"frac0.1": {"auroc": 0.8}}, "linear": {"frac0.1": {"auroc": 0.75}}}
    assert list(pd.read_csv(tmp_path / "m.csv")["adaptation"]) == ["finetune", "finetune", "linear"]


def test_evaluate_bad_meta_is_a_message_not_a_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC))
    res = subprocess.run([sys.executable, "-m", "fundusfm.cli", "evaluate", "--predictions", "p.csv",
                          "--task-json", BINARY_TASK, "--meta", '{"task": "t"}', "--out", str(tmp_path / "o.json")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and "--meta lacks key(s)" in res.stderr

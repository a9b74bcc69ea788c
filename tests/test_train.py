"""Training engine: samplers, hparams, outputs of the contract, resume, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train_helpers import BINARY_TASK, MULTILABEL_TASK, make_task_table, tiny_hparams  # noqa: E402

from fundusfm.models import load_trained  # noqa: E402
from fundusfm.train.cli import train_main as main  # noqa: E402
from fundusfm.train.config import resolve_hparams  # noqa: E402
from fundusfm.train.data import EpochBatchSampler, load_image  # noqa: E402

torch.set_num_threads(1)
OUTPUTS = {"model.safetensors", "model.json", "history.csv", "train_config.json", "predictions_val.csv",
           "predictions_test.csv", "predictions_external_ext.csv"}


def _cli(table, out, *, hp=None, task=BINARY_TASK, seed=1, extra=()):
    return ["--table", str(table), "--fold", "0", "--fraction", "1.0", "--seed", str(seed), "--task-json", task,
            "--init", "random", "--hparams-json", hp or tiny_hparams(), "--out", str(out),
            "--external", "ext", "--device", "cpu", "--workers", "0", *extra]


def test_hparams_defaults_and_unknown_keys():
    hp = resolve_hparams({"lr": 3e-4, "augment": {"rotation": 10}})
    assert hp["arch"] == "resnet50" and hp["img_size"] == 512 and hp["lr"] == 3e-4
    assert hp["augment"]["rotation"] == 10 and hp["augment"]["hflip"] == 0.5
    with pytest.raises(ValueError, match=r"unknown hparams key\(s\) \['learning_rate'\]"):
        resolve_hparams({"learning_rate": 1})
    with pytest.raises(ValueError, match="augment key"):
        resolve_hparams({"augment": {"blur": 1}})
    with pytest.raises(ValueError, match="mode"):
        resolve_hparams({"mode": "partial"})


@pytest.mark.parametrize("weights", [None, np.linspace(1, 3, 37)])
def test_ddp_shards_see_each_drawn_sample_once_and_match_single_process(weights):
    n, bs = 37, 8
    single = EpochBatchSampler(n, bs, seed=5, weights=weights)
    shards = [EpochBatchSampler(n, bs, seed=5, rank=r, world=2, weights=weights) for r in range(2)]
    for epoch in (0, 1):
        single.set_epoch(epoch)
        for s in shards:
            s.set_epoch(epoch)
        one = list(single)
        per_rank = [list(s) for s in shards]
        assert len(per_rank[0]) == len(per_rank[1]) == len(one) == len(shards[0])
        for step, batch in enumerate(one):
            assert per_rank[0][step] + per_rank[1][step] == batch  # same samples and same aug seeds
        if weights is None:
            seen = [i for b in one for i, _ in b]
            assert len(seen) == len(set(seen)) == n  # 37 % 8 = 5 >= 4: nothing dropped
    single.set_epoch(0)
    e0 = list(single)
    single.set_epoch(1)
    assert list(single) != e0


def test_sampler_resume_mid_epoch_skips_done_steps():
    s = EpochBatchSampler(30, 4, seed=0)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, start_step=2)
    assert list(s) == full[2:]


def test_finetune_writes_contract_outputs_and_load_trained_reproduces(tmp_path):
    table = make_task_table(tmp_path)
    out = tmp_path / "out"
    assert main(_cli(table, out)) == 0
    assert OUTPUTS <= {p.name for p in out.iterdir()}
    assert not (out / ".resume").exists()
    hist = pd.read_csv(out / "history.csv")
    assert list(hist.columns) == ["epoch", "train_loss", "val_loss", "val_auroc", "monitor_fallback", "lr", "time"]
    assert (hist["monitor_fallback"] == 0).all()
    assert list(hist["epoch"]) == [0, 1]
    test = pd.read_csv(out / "predictions_test.csv", dtype={"image_id": str})
    assert list(test.columns) == ["image_id", "dataset", "patient_id", "eye", "label", "prob_normal", "prob_abnormal"]
    np.testing.assert_allclose(test[["prob_normal", "prob_abnormal"]].sum(axis=1), 1, atol=1e-5)
    ext = pd.read_csv(out / "predictions_external_ext.csv")
    assert set(ext["dataset"]) == {"ext"} and len(ext) == 8
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == ["normal", "abnormal"] and meta["init_report"]["source"] == "random"
    model, meta2 = load_trained(out)
    assert meta2 == meta and not model.training
    rows = pd.read_csv(table, dtype={"image_id": str}).set_index("image_id").loc[test["image_id"]]
    x = torch.stack([load_image(p, meta["img_size"]) for p in rows["image"]]).float() / 255
    x = (x - torch.tensor(meta["mean"]).view(1, 3, 1, 1)) / torch.tensor(meta["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        prob = torch.softmax(model(x), 1).numpy()
    np.testing.assert_allclose(prob, test[["prob_normal", "prob_abnormal"]].to_numpy(), atol=1e-4)


def test_multilabel_linear_probe_with_paper_head_and_balanced_sampler(tmp_path):
    table = make_task_table(tmp_path, n=40)
    out = tmp_path / "out"
    hp = tiny_hparams(head="paper", mode="linear_probe", imbalance="balanced_sampler", epochs=1)
    assert main(_cli(table, out, hp=hp, task=MULTILABEL_TASK)) == 0
    pred = pd.read_csv(out / "predictions_val.csv")
    assert {"label_dr", "label_glaucoma", "prob_dr", "prob_glaucoma"} <= set(pred.columns)
    assert pred[["prob_dr", "prob_glaucoma"]].apply(lambda c: c.between(0, 1).all()).all()


def test_label_fraction_trains_on_a_patient_subset(tmp_path):
    table = make_task_table(tmp_path, n=80)
    out = tmp_path / "out"
    args = _cli(table, out, hp=tiny_hparams(epochs=1))
    args[args.index("--fraction") + 1] = "0.5"
    assert main(args) == 0
    cfg = json.loads((out / "train_config.json").read_text())
    assert 20 <= cfg["n_images"]["train"] < 48 and cfg["fraction"] == 0.5
    # what the job used, to size cluster requests (no GPU here: no GPU memory entry)
    used = cfg["resources"]
    assert used["wall_s"] > 0 and used["cpu_s"] > 0 and used["max_rss_mb"] > 100 and "max_gpu_mem_mb" not in used


def test_unlabelled_training_row_is_a_clear_error(tmp_path, capsys):
    table = make_task_table(tmp_path)
    df = pd.read_csv(table)
    df.loc[3, "abnormal"] = np.nan
    df.to_csv(table, index=False)
    # row 5 of the file: the header is row 1, pandas' index 3 is the fourth data row
    assert main(_cli(table, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "row 5 (dev/dev_0003) column 'abnormal'" in err and "Traceback" not in err


def test_non_finite_loss_names_epoch_and_step(tmp_path):
    table = make_task_table(tmp_path, n=24)
    with pytest.raises(FloatingPointError, match=r"epoch \d+ step \d+"):
        main(_cli(table, tmp_path / "out", hp=tiny_hparams(lr=1e12, warmup_epochs=0, epochs=3)))
    assert not (tmp_path / "out" / "model.safetensors").exists()


def _run_cli(args, cwd, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    return subprocess.Popen([sys.executable, "-m", "fundusfm.cli", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def _wait_for_epoch(out: Path, proc, epoch: int, timeout=120) -> None:
    state = out / ".resume" / "state.pt"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if state.is_file():
            try:
                if torch.load(state, weights_only=False)["epoch"] >= epoch:
                    return
            except Exception:  # noqa: BLE001 - being replaced right now
                pass
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    raise TimeoutError(state)


def _same_results(a: Path, b: Path) -> None:
    ha, hb = pd.read_csv(a / "history.csv"), pd.read_csv(b / "history.csv")
    pd.testing.assert_frame_equal(ha.drop(columns="time"), hb.drop(columns="time"))
    for name in ("predictions_val.csv", "predictions_test.csv", "predictions_external_ext.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(a / name), pd.read_csv(b / name))


@pytest.mark.slow
def test_kill_9_mid_epoch_then_rerun_matches_uninterrupted_run(tmp_path):
    table = make_task_table(tmp_path, n=96)
    hp = tiny_hparams(epochs=4)
    ref = _run_cli(_cli(table, tmp_path / "ref", hp=hp), tmp_path)
    assert ref.wait(300) == 0, ref.stderr.read().decode()
    out = tmp_path / "killed"
    proc = _run_cli(_cli(table, out, hp=hp), tmp_path)
    _wait_for_epoch(out, proc, 1)
    time.sleep(0.15)  # into epoch 1
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    assert not (out / "model.safetensors").exists()  # outputs only when finished
    again = _run_cli(_cli(table, out, hp=hp), tmp_path)
    assert again.wait(300) == 0, again.stderr.read().decode()
    _same_results(tmp_path / "ref", out)


@pytest.mark.slow
def test_sigterm_checkpoints_exits_nonzero_and_resumes_to_same_result(tmp_path):
    table = make_task_table(tmp_path, n=96)
    hp = tiny_hparams(epochs=3)
    ref = _run_cli(_cli(table, tmp_path / "ref", hp=hp), tmp_path)
    assert ref.wait(300) == 0
    out = tmp_path / "term"
    proc = _run_cli(_cli(table, out, hp=hp), tmp_path)
    _wait_for_epoch(out, proc, 1)
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 75
    assert (out / ".resume" / "state.pt").is_file() and not (out / "model.json").exists()
    again = _run_cli(_cli(table, out, hp=hp), tmp_path)
    assert again.wait(300) == 0, again.stderr.read().decode()
    _same_results(tmp_path / "ref", out)


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    table = make_task_table(tmp_path, n=60)
    # a BatchNorm-free tiny ViT: per-rank BatchNorm statistics would legitimately differ on CPU
    hp = tiny_hparams(arch="test_vit", epochs=2, batch_size=12)
    single = _run_cli(_cli(table, tmp_path / "one", hp=hp), tmp_path)
    assert single.wait(300) == 0, single.stderr.read().decode()
    ddp = _run_cli(_cli(table, tmp_path / "two", hp=hp, extra=("--gpus", "2")), tmp_path)
    assert ddp.wait(300) == 0, ddp.stderr.read().decode()
    cfg = json.loads((tmp_path / "two" / "train_config.json").read_text())
    assert cfg["world_size"] == 2
    for name in ("predictions_val.csv", "predictions_test.csv", "predictions_external_ext.csv"):
        a, b = pd.read_csv(tmp_path / "one" / name), pd.read_csv(tmp_path / "two" / name)
        pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-4, rtol=1e-3)
    ha, hb = pd.read_csv(tmp_path / "one" / "history.csv"), pd.read_csv(tmp_path / "two" / "history.csv")
    np.testing.assert_allclose(ha["train_loss"], hb["train_loss"], rtol=1e-4)


def test_gpu_side_augmentation_is_seeded_per_sample():
    from fundusfm.train.config import DEFAULT_AUGMENT
    from fundusfm.train.data import GpuAugment

    x = torch.rand(4, 3, 24, 24)
    aug = GpuAugment(DEFAULT_AUGMENT)
    a, b, c = aug(x, [1, 2, 3, 4]), aug(x, [1, 2, 3, 4]), aug(x, [1, 2, 3, 5])
    assert a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[:3], c[:3])  # a sample's draw does not depend on its batch
    assert not torch.allclose(a[3], c[3])
    # the seeds the engine passes are the per-position seeds the workers get
    s = EpochBatchSampler(10, 4, 0, rank=1, world=2)
    s.set_epoch(3)
    for step, batch in enumerate(s):
        assert [seed for _, seed in batch] == s.aug_seeds(step)


def test_cuda_jobs_augment_on_the_device_by_default():
    from fundusfm.train.engine import augments_on_device

    assert resolve_hparams({})["augment_device"] == "auto"
    assert augments_on_device("auto", cuda=True) and not augments_on_device("auto", cuda=False)
    assert augments_on_device("gpu", cuda=False) and not augments_on_device("cpu", cuda=True)


def test_layer_decay_and_gpu_augment_path_train(tmp_path):
    table = make_task_table(tmp_path, n=24)
    hp = tiny_hparams(epochs=1, layer_decay=0.75, augment_device="gpu", label_smoothing=0.1)
    assert main(_cli(table, tmp_path / "out", hp=hp)) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()

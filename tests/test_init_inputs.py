"""Named init checkpoints are Snakemake inputs (new bytes retrain, even copied with
``cp -p``); a trusted pickle's conversion lives in the results tree, keyed by the source's
bytes, and a file beside the checkpoint is never taken on its word."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from workflow_helpers import copy_workflow, job_stats, run_snakemake, tiny_config  # noqa: E402

from fundusfm.hashing import sha256_file  # noqa: E402
from fundusfm.models.factory import create  # noqa: E402
from fundusfm.models.init import InitError, load_init, read_checkpoint  # noqa: E402

torch.set_num_threads(1)
DAY = 86400


def _pickled_module(path: Path, seed: int) -> nn.Module:
    """A whole pickled DataParallel model, as the paper released its ResNet50 (small here)."""
    torch.manual_seed(seed)
    net = create("resnet10t", 2, head="paper")
    torch.save(nn.DataParallel(net), path)
    return net


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


# ----------------------------------------------------------------------------- the conversion cache

def test_conversion_lives_in_the_results_tree_keyed_by_the_source_bytes(tmp_path):
    ckpt = tmp_path / "paper.pth"
    conversions = tmp_path / "results" / "conversions"
    a = _pickled_module(ckpt, seed=0)
    state, converted = read_checkpoint(ckpt, trust_pickle=True, conversions=conversions)
    assert converted == str(conversions / f"{sha256_file(ckpt)}.safetensors")
    assert not Path(str(ckpt) + ".safetensors").exists()  # nothing is written beside the checkpoint
    with safe_open(converted, "pt") as fh:
        assert fh.metadata() == {"source": "paper.pth", "source_sha256": sha256_file(ckpt), "trust_pickle": "true"}
    key = "conv1.0.weight"
    torch.testing.assert_close(load_file(converted)[key], a.state_dict()[key])

    other = tmp_path / "other.pth"
    b = _pickled_module(other, seed=1)
    _age(other, DAY)  # older than the conversion: an mtime rule would reuse the stale conversion
    subprocess.run(["cp", "-p", str(other), str(ckpt)], check=True)
    with pytest.raises(InitError, match=r"--trust-pickle"):  # never the stale weights, never unpickled
        read_checkpoint(ckpt, conversions=conversions)
    state, converted_b = read_checkpoint(ckpt, trust_pickle=True, conversions=conversions)
    assert converted_b != converted
    torch.testing.assert_close(state[key], b.state_dict()[key])
    # the same bytes again: the conversion is used (under trust_pickle), the model gets those weights
    model = create("resnet10t", 2, head="paper")
    report = load_init(model, f"checkpoint:{ckpt}", trust_pickle=True, conversions=conversions)
    assert report.converted_to == converted_b
    torch.testing.assert_close(model.state_dict()[key], b.state_dict()[key])


def test_a_conversion_planted_beside_an_untrusted_pickle_is_never_loaded(tmp_path):
    """A ``X.pth.safetensors`` with the pickle's SHA-256 in its header (as older versions
    wrote conversions) is not taken on its word: without trust_pickle the pickle is
    refused, with it the weights come from the pickle itself."""
    ckpt = tmp_path / "paper.pth"
    net = _pickled_module(ckpt, seed=0)
    planted = {k: torch.full_like(v, 7) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    save_file(planted, str(ckpt) + ".safetensors", metadata={"source": ckpt.name, "source_sha256": sha256_file(ckpt),
                                                              "trust_pickle": "true"})
    with pytest.raises(InitError, match="--trust-pickle"):
        load_init(create("resnet10t", 2, head="paper"), f"checkpoint:{ckpt}")
    model = create("resnet10t", 2, head="paper")
    load_init(model, f"checkpoint:{ckpt}", trust_pickle=True, conversions=tmp_path / "results" / "conversions")
    key = "conv1.0.weight"
    torch.testing.assert_close(model.state_dict()[key], net.state_dict()[key])
    assert not torch.equal(model.state_dict()[key], planted[key])


def test_a_planted_conversion_in_the_results_tree_without_trust_is_not_used(tmp_path):
    """The results tree's conversion is used only under trust_pickle and only when it
    records having been made under it."""
    ckpt = tmp_path / "paper.pth"
    conversions = tmp_path / "results" / "conversions"
    net = _pickled_module(ckpt, seed=0)
    planted = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    conversions.mkdir(parents=True)
    save_file(planted, str(conversions / f"{sha256_file(ckpt)}.safetensors"),
              metadata={"source": ckpt.name, "source_sha256": sha256_file(ckpt)})  # no trust_pickle recorded
    with pytest.raises(InitError, match="--trust-pickle"):
        read_checkpoint(ckpt, conversions=conversions)
    state, _ = read_checkpoint(ckpt, trust_pickle=True, conversions=conversions)
    torch.testing.assert_close(state["conv1.0.weight"], net.state_dict()["conv1.0.weight"])


def test_conversions_dir_of_a_job_folder_is_in_its_results_tree(tmp_path):
    from fundusfm import layout

    run = tmp_path / "results" / "finetune" / "t" / "mine" / "finetune" / "fold0" / "frac1" / "seed0"
    assert layout.conversions_dir_of(run) == tmp_path / "results" / "conversions"
    assert layout.conversions_dir_of(tmp_path / "results" / "features" / "t" / "mine") == \
        tmp_path / "results" / "conversions"
    assert layout.conversions_dir_of(tmp_path / "elsewhere") is None


# ----------------------------------------------------------------------------- through Snakemake

FRACTION_PATH = "finetune/fold0/frac1/seed0"


def _config(checkpoint: str) -> dict:
    cfg = copy.deepcopy(tiny_config())
    grade = cfg["tasks"]["grade"]
    grade["inits"] = ["random", "mine"]
    cfg["tasks"] = {"grade": grade}
    cfg["inits"] = {"mine": {"checkpoint": checkpoint}}
    cfg["mlflow"] = {"enabled": False}
    cfg["report"] = {"cam": False, "n_boot": 1}
    return cfg


def _weights(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in create("resnet10t", 5, head="paper").state_dict().items()}, str(path))


def _planned_finetunes(output: str) -> set[str]:
    """Inits of the fine-tunes in a dry run's job list (their ``output:`` lines)."""
    return set(re.findall(r"output: results/finetune/grade/(\w+)/" + FRACTION_PATH + "/model.safetensors", output))


def test_missing_init_checkpoint_stops_a_run_before_any_job_and_a_dry_run_lists_it(tmp_path):
    wd = copy_workflow(tmp_path / "wf", _config("weights/absent.safetensors"))
    p = run_snakemake(wd, "--cores", "1", check=False, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "MissingInputException" in out and "weights/absent.safetensors" in out, out[-3000:]
    assert not (wd / "results").exists() and not (wd / "data").exists()  # nothing ran
    # a dry run plans the study before the weights are fetched, and names what to fetch
    p = run_snakemake(wd, "-n", check=False, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "planned without these init checkpoints" in out, out[-3000:]
    assert "inits.mine: weights/absent.safetensors not found" in out, out[-3000:]


@pytest.mark.slow
def test_new_checkpoint_bytes_copied_with_cp_p_retrain_only_its_finetunes(tmp_path):
    wd = copy_workflow(tmp_path / "wf", _config("weights/mine.safetensors"))
    _weights(wd / "weights" / "mine.safetensors", seed=0)
    targets = [f"results/finetune/grade/{init}/{FRACTION_PATH}/model.safetensors" for init in ("random", "mine")]
    run_snakemake(wd, "--cores", "2", *targets)
    p = run_snakemake(wd, "-n", *targets)
    assert "Nothing to be done" in p.stdout + p.stderr, p.stdout[-2000:]

    new = tmp_path / "new.safetensors"
    _weights(new, seed=1)
    _age(new, DAY)  # older than every output: the mtime trigger cannot see the change
    subprocess.run(["cp", "-p", str(new), str(wd / "weights" / "mine.safetensors")], check=True)
    assert os.path.getmtime(wd / "weights" / "mine.safetensors") < os.path.getmtime(wd / targets[1])

    p = run_snakemake(wd, "-n", *targets)
    out = p.stdout + p.stderr
    assert job_stats(out).get("finetune") == 1, out[-3000:]
    assert _planned_finetunes(out) == {"mine"}, out[-3000:]
    assert "Params have changed" in out


def test_checkpoint_digest_follows_the_bytes_not_the_copy(tmp_path):
    """The rule parameter: a copy of the same bytes has the same digest (nothing to retrain
    for the params trigger); bytes rewritten in place get a new one, memo or not."""
    from fundusfm.hashing import sha256_file_memo

    a = tmp_path / "a.safetensors"
    _weights(a, seed=0)
    first = sha256_file_memo(a)
    shutil.copy(a, tmp_path / "b.safetensors")
    assert sha256_file_memo(tmp_path / "b.safetensors") == first
    _weights(a, seed=1)
    assert sha256_file_memo(a) != first  # rewritten in place: ctime moved, the memo does not serve the old digest

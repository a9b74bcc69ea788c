"""Config validation: typos and dangling references fail before any job runs."""

from pathlib import Path

import pytest
import yaml

from fundusfm import config as fcfg

REPO = Path(__file__).resolve().parents[1]


def demo():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.yaml")) + sorted((REPO / "tests" / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(path):
    fcfg.load(path)


def test_typo_in_a_key_is_named():
    c = demo()
    c["train"] = dict(c["train"])
    c["preprocess"]["sise"] = 256
    with pytest.raises(fcfg.ConfigError, match=r"preprocess: .*'sise'"):
        fcfg.validate(c)


def test_task_referencing_unknown_dataset_is_named():
    c = demo()
    c["tasks"]["multidisease"]["datasets"] = ["multidisese"]
    with pytest.raises(fcfg.ConfigError, match=r"tasks\.multidisease\.datasets: unknown dataset 'multidisese'"):
        fcfg.validate(c)


def test_unknown_init_and_missing_fold_are_named():
    c = demo()
    c["tasks"]["drgrade"]["inits"] = ["random", "retfound"]
    c["tasks"]["drgrade"]["run_folds"] = [7]
    with pytest.raises(fcfg.ConfigError) as e:
        fcfg.validate(c)
    assert "unknown init 'retfound'" in str(e.value) and "fold 7 does not exist" in str(e.value)


def test_named_checkpoint_init_becomes_cli_args():
    c = demo()
    c["inits"] = {"paper": {"checkpoint": "weights/paper.pth", "trust_pickle": True}}
    c["tasks"]["drgrade"]["inits"] = ["random", "paper"]
    fcfg.validate(c)
    assert fcfg.init_args(c, "paper") == ["--init", "checkpoint:weights/paper.pth", "--init-name", "paper", "--trust-pickle"]
    assert fcfg.init_args(c, "fundus")[1] == "checkpoint:results/pretrain/random/model.safetensors"


def test_run_grid_is_task_init_adaptation_fold_fraction_seed():
    c = fcfg.validate(demo())
    t = c["tasks"]["multidisease"]
    assert t["adaptations"] == ["finetune", "linear"]
    grid = fcfg.runs(c, "multidisease")
    per_adaptation = len(t["inits"]) * len(t["run_folds"]) * len(t["fractions"]) * len(t["seeds"])
    assert len(fcfg.runs(c, "multidisease", adaptation="finetune")) == per_adaptation
    # a linear probe on all labels is deterministic: its first seed only (no copies counted as replicates)
    linear = fcfg.runs(c, "multidisease", adaptation="linear")
    assert {(r.fraction, r.seed) for r in linear} == {("0.1", 0), ("0.1", 1), ("1", 0)}
    assert len(grid) == per_adaptation + len(linear)
    assert {r.fraction for r in grid} == {"0.1", "1"}
    assert fcfg.pretrain_sources(c) == ["random"]
    assert fcfg.eval_sets(t) == ["test", "external_external"]


def test_dataset_in_pretraining_and_a_task_is_refused_naming_both_keys():
    c = demo()
    c["tasks"]["drgrade"]["datasets"] = ["drgrade", "upstream"]
    with pytest.raises(fcfg.ConfigError) as err:
        fcfg.validate(c)
    msg = str(err.value)
    assert "tasks.drgrade.datasets" in msg and "pretrain.datasets" in msg and "'upstream'" in msg
    assert "pretrain.also_in_tasks" in msg  # the way out is named
    c = demo()
    c["tasks"]["multidisease"]["external"] = ["upstream"]
    with pytest.raises(fcfg.ConfigError, match=r"tasks\.multidisease\.external and pretrain\.datasets"):
        fcfg.validate(c)


def test_explicit_override_admits_a_shared_dataset():
    c = demo()
    c["tasks"]["drgrade"]["datasets"] = ["drgrade", "upstream"]
    c["pretrain"]["also_in_tasks"] = ["upstream"]
    assert fcfg.validate(c)["pretrain"]["also_in_tasks"] == ["upstream"]
    c = demo()
    c["pretrain"]["also_in_tasks"] = ["drgrade"]
    with pytest.raises(fcfg.ConfigError, match="not a pretraining dataset"):
        fcfg.validate(c)


def test_two_folds_leave_no_training_fold_and_are_refused():
    c = demo()
    c["tasks"]["drgrade"]["split"]["folds"] = 2
    with pytest.raises(fcfg.ConfigError, match=r"tasks\.drgrade\.split\.folds.*minimum of 3"):
        fcfg.validate(c)

"""One home per concept: the results layout, the task definition, config defaults and the
released run (issue 12)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from fundusfm import config as fcfg
from fundusfm import layout
from fundusfm.task import TaskSpec

REPO = Path(__file__).resolve().parents[1]


def demo() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


# ----------------------------------------------------------------------------- layout


def test_run_paths_are_built_and_parsed_by_the_same_pattern(tmp_path):
    run = layout.Run("dr", "imagenet+fundus", 2, layout.fmt_fraction(0.10), 7)
    assert run.path == "dr/imagenet+fundus/finetune/fold2/frac0.1/seed7"
    probe = layout.Run("dr", "retfound", 2, "0.1", 7, "linear")
    assert probe.path == "dr/retfound/linear/fold2/frac0.1/seed7"
    assert layout.parse_key(probe.key)["adaptation"] == "linear"
    assert layout.finetune_dir("results", run) == f"results/finetune/{run.path}"
    assert layout.metrics_json("results", run, "test") == f"results/metrics/{run.path}/test.json"
    folder = tmp_path / layout.finetune_dir("results", run)
    key, results = layout.run_key(folder)
    assert key == run.key and results == tmp_path / "results"
    assert layout.parse_key(key) == {"kind": "finetune", "task": "dr", "init": "imagenet+fundus",
                                     "adaptation": "finetune", "fold": 2, "fraction": "0.1", "seed": 7}
    with pytest.raises(ValueError, match="not a run key"):
        layout.parse_key("finetune/dr/retfound/frozen/fold2/frac0.1/seed7")  # no such adaptation
    assert layout.parse_key("pretrain/imagenet")["init"] == "imagenet"
    with pytest.raises(ValueError, match="not a training folder"):
        layout.run_key(tmp_path / "finetune" / "dr" / "random")


def test_find_run_dirs_lists_finished_jobs_only(tmp_path):
    res = tmp_path / "results"
    done = res / "finetune" / "t/random/finetune/fold0/frac1/seed0"
    running = res / "finetune" / "t/random/linear/fold1/frac1/seed0"
    stray = res / "finetune" / "t/random/finetune/notafold/frac1/seed0"
    for d in (done, running, stray, res / "pretrain" / "random"):
        d.mkdir(parents=True)
    for d in (done, stray, res / "pretrain" / "random"):
        (d / "model.json").write_text("{}")
    assert layout.find_run_dirs(res) == [res / "pretrain" / "random", done]


def test_the_rules_use_the_layouts_run_pattern():
    rules = "".join((REPO / "rules" / f).read_text() for f in ("train.smk", "evaluate.smk"))
    assert "fold{{fold}}" not in rules and rules.count("{RUN") >= 8
    assert "RUN = layout.RUN" in (REPO / "rules" / "common.smk").read_text()


# ----------------------------------------------------------------------------- the released run


def test_release_is_the_foundation_model_by_the_rule_export_uses(tmp_path):
    assert fcfg.released_run_dir(fcfg.validate(demo())) == "results/pretrain/random"  # the demo's only one
    c = demo()
    for t in c["tasks"].values():
        t["inits"] = t["inits"] + ["imagenet+fundus"]
    assert fcfg.released_run_dir(fcfg.validate(c)) == "results/pretrain/imagenet"  # the paper's best
    from fundusfm.release.cli import _default_run_dir  # export without --run-dir: the same rule

    for source in ("random", "imagenet"):
        (tmp_path / "pretrain" / source).mkdir(parents=True)
        (tmp_path / "pretrain" / source / "model.json").write_text("{}")
    assert _default_run_dir(tmp_path) == tmp_path / "pretrain" / "imagenet"


def test_release_of_a_task_takes_the_largest_fraction_first_fold_and_seed():
    c = demo()
    task = next(iter(c["tasks"]))
    c["release"] = {"task": task, "init": c["tasks"][task]["inits"][0]}
    c = fcfg.validate(c)
    t = c["tasks"][task]
    expect = layout.Run(task, t["inits"][0], fcfg.run_folds(t)[0], layout.fmt_fraction(max(t["fractions"])),
                        min(t["seeds"]))
    assert fcfg.released_run_dir(c) == layout.finetune_dir("results", expect)


@pytest.mark.parametrize("release, message", [
    ({"task": "nosuchtask"}, r"release\.task: unknown task 'nosuchtask'"),
    ({"task": "drgrade", "init": "retfound"}, r"release\.init: task 'drgrade' has no init 'retfound'"),
    ({"init": "random"}, r"release\.init: needs release\.task"),
])
def test_release_cross_checks_are_named_before_any_job(release, message):
    c = demo()
    c["release"] = release
    with pytest.raises(fcfg.ConfigError, match=message):
        fcfg.validate(c)


# ----------------------------------------------------------------------------- defaults, schema


def test_the_schema_ships_in_the_package_and_carries_no_defaults():
    from importlib import resources

    schema = yaml.safe_load(resources.files("fundusfm").joinpath(fcfg.SCHEMA).read_text())
    assert schema == fcfg.schema() and schema["properties"]["study"]

    def keys(node):
        if isinstance(node, dict):
            for k, v in node.items():
                yield k
                yield from keys(v)
        elif isinstance(node, list):
            for v in node:
                yield from keys(v)

    assert "default" not in set(keys(schema))


def test_defaults_are_filled_in_one_place():
    c = demo()
    c.pop("seed", None)
    c["seed"] = 5
    c["pretrain"].pop("seed", None)
    c.pop("mlflow", None)
    c.pop("release", None)
    out = fcfg.validate(copy.deepcopy(c))
    assert out["pretrain"]["seed"] == 5  # the top-level seed (the schema used to say 0)
    assert out["mlflow"] == {"enabled": True, "log_each_job": True, "log_model": False}
    assert out["release"] == {"licence": "CC-BY-NC-4.0"}
    assert fcfg.validate(copy.deepcopy(out)) == out  # idempotent


# ----------------------------------------------------------------------------- the task


def test_one_taskspec_for_training_and_evaluation():
    spec = TaskSpec.from_dict({"type": "binary", "label": "abnormal", "classes": ["normal", "abnormal"]}, "up")
    assert (spec.type, spec.columns, spec.num_outputs, spec.name) == ("binary", ("abnormal",), 2, "up")
    assert spec.label_columns() == ["label"] and spec.prob_columns() == ["prob_normal", "prob_abnormal"]
    assert TaskSpec.from_dict(spec.as_dict()) == TaskSpec("binary", ("abnormal",), ("normal", "abnormal"))
    ml = TaskSpec.from_dict({"type": "multilabel", "labels": ["dr", "amd"]})
    assert ml.label_columns() == ["label_dr", "label_amd"] and ml.columns == ("dr", "amd")
    with pytest.raises(ValueError, match=r"task 't': duplicate names in 'classes'"):
        TaskSpec.from_dict({"type": "multiclass", "label": "x", "classes": ["a", "b", "a"]}, "t")
    with pytest.raises(ValueError, match=r"'type' must be one of"):
        TaskSpec.from_dict({"type": "regression"})


def test_train_no_longer_imports_evaluate():
    import ast

    for path in (REPO / "src" / "fundusfm" / "train").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        assert not [m for m in names if m.startswith("fundusfm.evaluate")], path

"""Config gaps closed before any job runs: seeds >= 0, no repeated seeds / inits / folds /
fractions, names of at most 64 characters, and no duplicate YAML keys (also in the files
Snakemake itself is given, checked through a real ``snakemake -n``)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from workflow_helpers import copy_workflow, run_snakemake, tiny_config  # noqa: E402

from fundusfm import config as fcfg  # noqa: E402


def _tiny() -> dict:
    return copy.deepcopy(tiny_config())


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["tasks"]["grade"].update(seeds=[-1]), r"tasks\.grade\.seeds\.0: -1 is less than the minimum of 0"),
    (lambda c: c.update(seed=-3), r"seed: -3 is less than the minimum of 0"),
    (lambda c: c["tasks"]["grade"].update(seeds=[0, 1, 0]), r"tasks\.grade\.seeds: \[0, 1, 0\] has non-unique"),
    (lambda c: c["tasks"]["multi"].update(inits=["random", "fundus", "random"]),
     r"tasks\.multi\.inits: \['random', 'fundus', 'random'\] has non-unique"),
    (lambda c: c["tasks"]["multi"].update(run_folds=[0, 0]), r"tasks\.multi\.run_folds: \[0, 0\] has non-unique"),
    (lambda c: c["tasks"]["multi"].update(fractions=[0.5, 0.5]), r"tasks\.multi\.fractions: \[0\.5, 0\.5\] has non-unique"),
    (lambda c: c["tasks"]["multi"].update(fractions=[0.1, 0.1000001]),
     r"tasks\.multi\.fractions: repeated values .* \(as run paths: \['0\.1', '0\.1'\]\)"),
    (lambda c: c["tasks"]["multi"].update(datasets=["down", "down"]), r"tasks\.multi\.datasets: .* has non-unique"),
], ids=["negative seed", "negative top-level seed", "repeated seed", "repeated init", "repeated fold",
        "repeated fraction", "fractions equal as paths", "repeated dataset"])
def test_bad_grid_values_are_named(edit, message):
    c = _tiny()
    edit(c)
    with pytest.raises(fcfg.ConfigError, match=message):
        fcfg.validate(c)


@pytest.mark.parametrize("where", ["dataset", "task", "init", "study"])
def test_names_longer_than_64_characters_are_refused(where):
    c = _tiny()
    long = "n" * 65
    if where == "dataset":
        c["datasets"][long] = c["datasets"].pop("ext")
        c["tasks"]["multi"]["external"] = [long]
    elif where == "task":
        c["tasks"][long] = c["tasks"].pop("grade")
    elif where == "init":
        c["inits"] = {long: {"checkpoint": "w.safetensors"}}
        c["tasks"]["grade"]["inits"] = ["random", long]
    else:
        c["study"] = long
    with pytest.raises(fcfg.ConfigError, match=f"'{long}' is too long"):
        fcfg.validate(c)
    c = _tiny()  # 64 is fine
    c["study"] = "n" * 64
    fcfg.validate(c)


def test_duplicate_yaml_keys_are_named_with_their_path_and_lines(tmp_path):
    path = tmp_path / "study.yaml"
    text = yaml.safe_dump(tiny_config(), sort_keys=False)
    text = text.replace("  epochs: 1\n", "  epochs: 6\n  epochs: 60\n")
    path.write_text(text)
    lines = text.splitlines()
    first = lines.index("  epochs: 6") + 1
    with pytest.raises(fcfg.ConfigError, match=rf"key 'train\.epochs' is given twice \(lines {first} and {first + 1}\)"):
        fcfg.load(path)
    assert yaml.safe_load(text)["train"]["epochs"] == 60  # what a plain loader would have used


def test_a_task_given_twice_is_named(tmp_path):
    path = tmp_path / "study.yaml"
    text = yaml.safe_dump(tiny_config(), sort_keys=False)
    task = text[text.index("  grade:\n"):text.index("report:")]
    path.write_text(text.replace("report:", task + "report:"))
    with pytest.raises(fcfg.ConfigError, match=r"key 'tasks\.grade' is given twice"):
        fcfg.load(path)


def test_equal_keys_in_different_mappings_are_fine():
    text = "a: {x: 1, y: 2}\nb: {x: 1}\nc: [{x: 1}, {x: 2}]\n"
    assert fcfg.duplicate_keys(text) == []
    assert fcfg.duplicate_keys("c: [{x: 1, x: 2}]\n") == [
        "config: key 'c[0].x' is given twice (lines 1 and 1); YAML would keep the last silently, remove one"]


# ----------------------------------------------------------------------------- through snakemake -n

@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("gaps"), tiny_config())


def _dry_run(wd: Path, config_text: str, *args: str, via_configfile: bool = False):
    target = wd / ("mine.yaml" if via_configfile else "config/config.yaml")
    target.write_text(config_text)
    extra = ("--configfile", str(target)) if via_configfile else ()
    return run_snakemake(wd, "-n", *extra, *args, check=False, timeout=300)


def _tiny_text(**task_edits) -> str:
    c = _tiny()
    c["tasks"]["grade"].update(task_edits)
    return yaml.safe_dump(c, sort_keys=False)


@pytest.mark.parametrize("edit, message", [
    (lambda: _tiny_text(seeds=[-1]), "tasks.grade.seeds.0: -1 is less than the minimum of 0"),
    (lambda: _tiny_text(seeds=[3, 3]), "tasks.grade.seeds: [3, 3] has non-unique elements"),
    (lambda: _tiny_text().replace("  epochs: 1\n", "  epochs: 6\n  epochs: 60\n"), "key 'train.epochs' is given twice"),
], ids=["seeds [-1]", "duplicate seeds", "duplicate YAML key"])
def test_snakemake_dry_run_refuses_the_config_naming_the_key(workflow_copy, edit, message):
    p = _dry_run(workflow_copy, edit())
    out = p.stdout + p.stderr
    assert p.returncode != 0 and message in out, out[-3000:]
    assert "Job stats" not in out  # refused before any job was planned


def test_snakemake_dry_run_refuses_duplicate_keys_in_a_configfile_argument(workflow_copy):
    text = _tiny_text().replace("  grade:\n", "  grade:\n    seeds: [5]\n", 1)  # seeds twice in tasks.grade
    p = _dry_run(workflow_copy, text, via_configfile=True)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "mine.yaml: key 'tasks.grade.seeds' is given twice" in out, out[-3000:]


def test_snakemake_dry_run_accepts_the_valid_config(workflow_copy):
    p = _dry_run(workflow_copy, _tiny_text())
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert "finetune" in p.stdout


# ----------------------------------------------------------------------------- refused before any job (issue 23)

def _csv_dataset(glob) -> dict:
    # a csv-adapter dataset (docs/adding-a-dataset.md) whose image_glob lists the images on disk
    return {"adapter": "csv", "root": "data/extra", "labels_file": "labels.csv", "image_col": "file",
            "label_map": {"abnormal": "abn"}, "image_glob": glob}


def _edited(edit) -> str:
    c = _tiny()
    edit(c)
    return yaml.safe_dump(c, sort_keys=False)


LATE_REFUSALS = {
    "model_args pretrained": (lambda c: c["train"].update(model_args={"pretrained": True}),
                              "hparams model_args ['pretrained']: set by fundusfm itself"),
    "model_args pretrained_cfg_overlay": (
        lambda c: c["tasks"]["grade"].setdefault("hparams", {}).update(model_args={"pretrained_cfg_overlay": {}}),
        "hparams model_args ['pretrained_cfg_overlay']: set by fundusfm itself"),
    "model_args checkpoint_path": (lambda c: c["train"].update(model_args={"checkpoint_path": "w.pth"}),
                                   "hparams model_args ['checkpoint_path']: set by fundusfm itself"),
    "model_args num_classes": (lambda c: c["train"].update(model_args={"num_classes": 3}),
                               "hparams model_args ['num_classes']: set by fundusfm itself"),
    "lr .nan": (lambda c: c["train"].update(lr=float("nan")), "hparams lr must be a finite number, got nan"),
    "lr .inf": (lambda c: c["train"].update(lr=float("inf")), "hparams lr must be a finite number, got inf"),
    "epochs true": (lambda c: c["train"].update(epochs=True), "hparams epochs must be an integer, got True"),
    "pretrain epochs true": (lambda c: c["pretrain"].update(hparams={"epochs": True}),
                             "pretrain.hparams: hparams epochs must be an integer, got True"),
    "n_boot 0": (lambda c: c["report"].update(n_boot=0), "report.n_boot: 0 is less than the minimum of 1"),
    "seed 2**64": (lambda c: c["tasks"]["grade"].update(seeds=[2 ** 64]),
                   "tasks.grade.seeds.0: 18446744073709551616 is greater than the maximum of 4294967295"),
    "seed 2**32": (lambda c: c.update(seed=2 ** 32), "seed: 4294967296 is greater than the maximum of 4294967295"),
    "absolute image_glob": (lambda c: c["datasets"].update(extra=_csv_dataset("/etc/*")),
                            "datasets.extra.image_glob: glob '/etc/*' must be relative to the dataset root"),
    "image_glob with ..": (lambda c: c["datasets"].update(extra=_csv_dataset(["images/*.jpg", "../../*.jpg"])),
                           "datasets.extra.image_glob: glob '../../*.jpg' must be relative to the dataset root"),
}


@pytest.mark.parametrize("case", sorted(LATE_REFUSALS))
def test_late_refusals_are_refused_by_the_config_check(case):
    edit, message = LATE_REFUSALS[case]
    c = _tiny()
    edit(c)
    with pytest.raises(fcfg.ConfigError) as err:
        fcfg.validate(c)
    assert message in str(err.value)


def _many_late_refusals(c: dict) -> None:
    """Several refusals at once, each where no other hides it (a job's hyper-parameters
    stop at their first problem): one dry run names them all."""
    c["pretrain"]["hparams"] = {"model_args": {"pretrained": True}}
    c["tasks"]["multi"].setdefault("hparams", {})["lr"] = float("inf")
    c["tasks"]["grade"].setdefault("hparams", {})["epochs"] = True
    c["datasets"]["extra"] = _csv_dataset("/etc/*")
    c["datasets"]["extra2"] = _csv_dataset(["images/*.jpg", "../../*.jpg"])


@pytest.mark.parametrize("edit, messages", [
    (lambda c: (c["report"].update(n_boot=0), c["tasks"]["grade"].update(seeds=[2 ** 64])),
     ["n_boot 0", "seed 2**64"]),
    (_many_late_refusals, ["model_args pretrained", "lr .inf", "epochs true", "absolute image_glob"]),
    (lambda c: c["train"].update(lr=float("nan")), ["lr .nan"]),
], ids=["schema: n_boot 0, seed 2**64", "hparams and globs", "lr .nan"])
def test_late_refusals_are_refused_by_snakemake_dry_run(workflow_copy, edit, messages):
    p = _dry_run(workflow_copy, _edited(edit))
    out = p.stdout + p.stderr
    assert p.returncode != 0, out[-3000:]
    for case in messages:
        assert LATE_REFUSALS[case][1].replace("pretrain.hparams: ", "") in out, (case, out[-3000:])
    if "absolute image_glob" in messages:
        assert "datasets.extra2.image_glob: glob '../../*.jpg' must be relative to the dataset root" in out
    assert "Job stats" not in out  # refused before any job was planned


def test_typed_hparams_keep_the_valid_values():
    from fundusfm.train.config import resolve_hparams

    hp = resolve_hparams({"lr": 3e-4, "epochs": 2, "patience": None, "grad_clip": 1.0, "mean": "imagenet",
                          "std": [0.2, 0.2, 0.2], "augment": {"ratio": [0.8, 1.25]}, "log_every": 0})
    assert hp["lr"] == 3e-4 and hp["augment"]["ratio"] == [0.8, 1.25]
    for bad in ({"weight_decay": -0.1}, {"drop_rate": 1.5}, {"batch_size": 8.0}, {"channels_last": "yes"},
                {"std": [0.2, 0.0, 0.2]}, {"augment": {"hflip": 2}}, {"grad_clip": float("nan")}):
        with pytest.raises(ValueError, match="hparams"):
            resolve_hparams(bad)

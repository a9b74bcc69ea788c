"""Bad input is reported with file, row and value; nothing is silently dropped."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import fixtures_datasets as fx
from fundusfm.data.adapters import read_dataset
from fundusfm.data.cli import ingest_main
from fundusfm.data.manifest import ManifestError, validate_manifest


def test_missing_image_is_an_error_naming_file_and_row(tmp_path):
    cfg = fx.build("aptos2019", tmp_path / "a")
    (tmp_path / "a" / "train_images" / "0024cdab0c1e.png").unlink()
    with pytest.raises(ManifestError) as e:
        read_dataset("aptos", cfg)
    (p,) = e.value.problems
    assert p["file"].endswith("train.csv") and p["row"] == 4 and "0024cdab0c1e" in p["value"]
    assert "missing" in p["message"]


def test_missing_image_excluded_explicitly(tmp_path):
    cfg = fx.build("aptos2019", tmp_path / "a")
    (tmp_path / "a" / "train_images" / "0024cdab0c1e.png").unlink()
    df, report = read_dataset("aptos", {**cfg, "on_missing": "exclude"})
    assert "0024cdab0c1e" not in set(df["image_id"]) and len(df) == len(fx.APTOS_TRAIN) - 1
    assert report["excluded"] == [{"image_id": "0024cdab0c1e", "path": "train_images/0024cdab0c1e.png",
                                   "reason": "image file missing", "file": str(tmp_path / "a" / "train.csv"), "row": "4"}]


def test_config_exclude_list(tmp_path):
    cfg = fx.build("eyepacs", tmp_path / "e")
    df, report = read_dataset("eyepacs", {**cfg, "exclude": ["13_left", "not_there"]})
    assert "13_left" not in set(df["image_id"]) and len(df) == 9
    assert [x["image_id"] for x in report["excluded"]] == ["13_left"]
    assert any("not_there" in w for w in report["warnings"])


def test_image_on_disk_without_label_is_reported_or_an_error(tmp_path):
    cfg = fx.build("aptos2019", tmp_path / "a")
    fx.write_image(tmp_path / "a" / "train_images" / "ffffffffffff.png")
    _, report = read_dataset("aptos", cfg)
    assert report["unlabelled_images"] == ["train_images/ffffffffffff.png"]
    with pytest.raises(ManifestError, match="ffffffffffff"):
        read_dataset("aptos", {**cfg, "on_unlabelled": "error"})


def test_duplicate_ids_name_both_rows(tmp_path):
    cfg = fx.build("aptos2019", tmp_path / "a")
    with open(tmp_path / "a" / "train.csv", "a") as f:
        f.write("0024cdab0c1e,1\n")
    with pytest.raises(ManifestError) as e:
        read_dataset("aptos", cfg)
    (p,) = e.value.problems
    assert p["row"] == 8 and p["value"] == "0024cdab0c1e" and "first at" in p["message"] and "row 4" in p["message"]


def test_unknown_label_value_names_source_column(tmp_path):
    cfg = fx.build("aptos2019", tmp_path / "a")
    text = (tmp_path / "a" / "train.csv").read_text().replace("0083ee8054ee,3", "0083ee8054ee,7")
    (tmp_path / "a" / "train.csv").write_text(text)
    with pytest.raises(ManifestError) as e:
        read_dataset("aptos", cfg)
    (p,) = e.value.problems
    assert p["value"] == "7" and "diagnosis" in p["column"] and p["row"] == 7


def test_rfmid_non_binary_value(tmp_path):
    cfg = fx.build("rfmid", tmp_path / "r")
    csv = tmp_path / "r" / "Training_Set" / "Training_Set" / "RFMiD_Training_Labels.csv"
    df = pd.read_csv(csv)
    df.loc[1, "ARMD"] = 3
    df.to_csv(csv, index=False)
    with pytest.raises(ManifestError) as e:
        read_dataset("rfmid", cfg)
    assert [(p["row"], p["column"], p["value"]) for p in e.value.problems] == [(3, "ARMD", "3")]


def test_path_escaping_the_root(tmp_path):
    cfg = fx.build("deepdrid", tmp_path / "d")
    csv = tmp_path / "d" / "regular_fundus_images" / "regular-fundus-training" / "regular-fundus-training.csv"
    csv.write_text(csv.read_text().replace("\\regular-fundus-training\\2\\2_r1.jpg", "..\\..\\etc\\2_r1.jpg"))
    with pytest.raises(ManifestError) as e:
        read_dataset("deepdrid", cfg)
    (p,) = e.value.problems
    assert "escapes" in p["message"] and p["value"] == "../../etc/2_r1.jpg" and p["row"] == 7


def test_unreadable_spreadsheet(tmp_path):
    cfg = fx.build("odir5k", tmp_path / "o")
    (tmp_path / "o" / "ODIR-5K" / "ODIR-5K" / "data.xlsx").write_bytes(b"this is not a zip file")
    with pytest.raises(ManifestError, match="unreadable") as e:
        read_dataset("odir5k", cfg)
    assert e.value.problems[0]["file"].endswith("data.xlsx")


def test_missing_label_file_and_column(tmp_path):
    cfg = fx.build("messidor2", tmp_path / "m")
    csv = tmp_path / "m" / "messidor_data.csv"
    csv.write_text(csv.read_text().replace("adjudicated_dme", "dme"))
    with pytest.raises(ManifestError, match="adjudicated_dme"):
        read_dataset("messidor2", cfg)
    csv.unlink()
    with pytest.raises(ManifestError, match="messidor_data.csv"):
        read_dataset("messidor2", cfg)


def test_validate_user_manifest_lists_every_problem(tmp_path):
    fx.write_image(tmp_path / "images" / "a.png")
    df = pd.DataFrame({"image_id": ["a", "a", "b", "c"], "path": ["images/a.png", "images/a.png", "/etc/passwd", "images/c.png"],
                       "eye": ["L", "X", "R", "R"], "glaucoma": [1, 0, "yes", 0], "normal": [1, 0, 0, 1]})
    with pytest.raises(ManifestError) as e:
        validate_manifest(df, "mine", tmp_path)
    msgs = [(p["row"], p["column"], p["value"]) for p in e.value.problems]
    assert (3, "image_id", "a") in msgs and (4, "path", "/etc/passwd") in msgs and (5, "path", "images/c.png") in msgs
    assert (3, "eye", "X") in msgs and (4, "glaucoma", "yes") in msgs


def test_validate_flags_contradictory_labels(tmp_path):
    fx.write_image(tmp_path / "a.png")
    df = pd.DataFrame({"image_id": ["a"], "path": ["a.png"], "abnormal": [0], "amd": [1]})
    with pytest.raises(ManifestError, match="abnormal=0 but amd positive"):
        validate_manifest(df, "mine", tmp_path)
    with pytest.raises(ManifestError, match="required column"):
        validate_manifest(df.drop(columns="path"), "mine", tmp_path)


def test_ingest_cli_writes_manifest_and_report(tmp_path):
    cfg = fx.build("odir5k", tmp_path / "o")
    out, rep = tmp_path / "out" / "odir.csv", tmp_path / "out" / "odir.report.json"
    assert ingest_main(["--name", "odir", "--config-json", json.dumps(cfg), "--out", str(out), "--report", str(rep)]) == 0
    df = pd.read_csv(out, dtype={"patient_id": str})
    assert len(df) == 2 * len(fx.ODIR) and df.loc[df["image_id"] == "2_left", "dr_grade"].item() == 2
    report = json.loads(rep.read_text())
    assert report["n_images"] == 2 * len(fx.ODIR) and report["unmapped_labels"] == {}


def test_ingest_cli_fails_cleanly_on_bad_input(tmp_path, capsys):
    cfg = fx.build("aptos2019", tmp_path / "a")
    (tmp_path / "a" / "train_images" / "0024cdab0c1e.png").unlink()
    out = tmp_path / "m.csv"
    assert ingest_main(["--name", "aptos", "--config-json", json.dumps(cfg), "--out", str(out)]) == 1
    assert "0024cdab0c1e" in capsys.readouterr().err and not out.exists()


# ---- adapter options: typed, refused before anything is read, naming the key (issue 16 item 3) ----
@pytest.mark.parametrize("key, value, needle", [
    ("exhaustive", "no", "true or false"),
    ("exhaustive", "false", "true or false"),
    ("include_unlabelled", "yes", "true or false"),
    ("labels_file", 3, "non-empty path"),
    ("exclude", 7, "list of image ids"),
    ("exclude", [{"a": 1}], "image ids"),
    ("on_missing", "skip", "one of"),
    ("max_unknown_fraction", 2, "between 0 and 1"),
])
def test_bad_option_type_is_refused_naming_the_key(tmp_path, key, value, needle):
    from fundusfm.data.adapters import option_problems

    cfg = {**fx.build("aptos2019", tmp_path / "a"), key: value}
    (p,) = option_problems("aptos", cfg)
    assert p["column"] == f"datasets.aptos.{key}" and needle in p["message"]
    with pytest.raises(ManifestError) as e:
        read_dataset("aptos", cfg)
    assert e.value.problems[0]["column"] == f"datasets.aptos.{key}"


@pytest.mark.parametrize("key, value, needle", [
    ("label_map", "grade", "mapping {label: column}"),
    ("label_map", ["glaucoma"], "mapping"),
    ("label_map", {"glaucoma": 3}, "name a column"),
    ("split_map", ["train"], "mapping"),
    ("split_map", {"T": "training"}, "train, val, test"),
    ("value_map", ["POAG"], "mapping"),
    ("value_map", {"glaucoma": "POAG"}, "mapping {source value: value}"),
    ("path_template", 5, "non-empty string"),
    ("image_col", 2, "non-empty string"),
])
def test_bad_csv_option_types_are_refused_naming_the_key(tmp_path, key, value, needle):
    from fundusfm.data.adapters import option_problems

    cfg = {**fx.build("csv", tmp_path / "c"), key: value}
    problems = option_problems("clinic", cfg)
    assert any(p["column"] == f"datasets.clinic.{key}" and needle in p["message"] for p in problems), problems


def test_class_map_entries_are_checked(tmp_path):
    from fundusfm.data.adapters import option_problems

    (p,) = option_problems("j", {"adapter": "jsiec", "root": "r", "class_map": {"x": "normal"}})
    assert p["column"] == "datasets.j.class_map" and "'x'" in p["message"]
    (p,) = option_problems("j", {"adapter": "jsiec", "root": "r", "class_map": {"x": {"normol": 1}}})
    assert "'normol' is not a harmonised label" in p["message"]


def test_exhaustive_no_is_refused_by_the_config_check_before_any_job(tmp_path):
    import yaml

    from fundusfm import config as fcfg

    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "tests" / "configs" / "tiny.yaml").read_text())
    cfg["datasets"]["clinic_a"] = {"adapter": "aptos2019", "root": "data/clinic_a", "exhaustive": "no"}
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(fcfg.ConfigError) as e:
        fcfg.load(path)
    assert "datasets.clinic_a.exhaustive" in str(e.value) and "true or false" in str(e.value)


def test_missing_exclude_file_is_a_clear_error(tmp_path):
    cfg = {**fx.build("aptos2019", tmp_path / "a"), "exclude": "not_there.txt"}
    with pytest.raises(ManifestError) as e:
        read_dataset("aptos", cfg)
    (p,) = e.value.problems
    assert p["column"] == "exclude" and p["file"].endswith("not_there.txt") and "not found" in p["message"]
    (tmp_path / "a" / "ex.csv").write_text("id\n0024cdab0c1e\n")
    with pytest.raises(ManifestError, match="image_id"):
        read_dataset("aptos", {**cfg, "exclude": "ex.csv"})


# ---- NaN / inf in a label column: a file/row/column problem, not a traceback (issue 16 item 4) ----
@pytest.mark.parametrize("bad", ["NaN", "inf", "-inf", "nan"])
def test_nan_or_inf_grade_names_file_row_and_column(tmp_path, bad):
    cfg = fx.build("aptos2019", tmp_path / "a")
    text = (tmp_path / "a" / "train.csv").read_text().replace("0083ee8054ee,3", f"0083ee8054ee,{bad}")
    (tmp_path / "a" / "train.csv").write_text(text)
    with pytest.raises(ManifestError) as e:
        read_dataset("aptos", cfg)
    (p,) = e.value.problems
    assert p["file"].endswith("train.csv") and p["row"] == 7 and "diagnosis" in p["column"] and p["value"] == bad
    assert "not a label value" in p["message"]


def test_nan_in_a_user_manifest_label_column(tmp_path):
    fx.write_image(tmp_path / "a.png")
    df = pd.DataFrame({"image_id": ["a"], "path": ["a.png"], "glaucoma": ["inf"]})
    with pytest.raises(ManifestError) as e:
        validate_manifest(df, "mine", tmp_path)
    (p,) = e.value.problems
    assert (p["row"], p["column"], p["value"]) == (2, "glaucoma", "inf")


@pytest.mark.slow
def test_snakemake_dry_run_refuses_bad_adapter_option_types(tmp_path):
    """`snakemake -n` stops at the config check, naming each bad key, before planning any job."""
    from workflow_helpers import copy_workflow, run_snakemake, tiny_config

    cfg = tiny_config()
    cfg["datasets"]["clinic"] = {"adapter": "aptos2019", "root": "data/clinic", "exhaustive": "no"}
    cfg["datasets"]["export"] = {"adapter": "csv", "root": "data/export", "labels_file": "x.csv",
                                 "image_col": "File", "label_map": "grade"}
    wd = copy_workflow(tmp_path / "wd", cfg)
    p = run_snakemake(wd, "-n", "--cores", "1", check=False, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert "datasets.clinic.exhaustive" in out and "datasets.export.label_map" in out
    assert "Job stats" not in out

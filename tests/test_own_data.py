"""A user's own data: the generic `csv` route on a realistic hospital export, `fundusfm
check-dataset` on planted faults, every ingest problem written out, exclusions that leave
nothing, symlinks out of the root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fundusfm.data.adapters import option_problems, read_dataset
from fundusfm.data.check import check_dataset, format_text, near_collisions
from fundusfm.data.cli import check_dataset_main, ingest_main
from fundusfm.data.manifest import ManifestError
from hospital_export import make_hospital_export

REPO = Path(__file__).resolve().parents[1]


def hospital_cfg(root: Path, **over) -> dict:
    """The config entry docs/adding-a-dataset.md gives for this export."""
    cfg = {"adapter": "csv", "root": str(root), "labels_file": "export.xlsx", "sheet": "Export", "header_row": 2,
           "date_columns": {"Visit date": None},
           "path_template": "images/{MRN}/{Visit date:%Y-%m-%d}/{MRN}_{Visit date:%Y%m%d}_{Eye}.jpg",
           "patient_col": "MRN", "eye_col": "Eye", "label_map": {"glaucoma": "Diagnosis"},
           "value_map": {"glaucoma": {"Glaucoma": 1, "No glaucoma": 0}},
           "quality_col": "Image quality", "quality_map": {"Good": "good", "Ungradable": "reject"},
           "image_glob": "images/*/*/*.jpg", "on_unlabelled": "error"}
    cfg.update(over)
    return {k: v for k, v in cfg.items() if v is not None}  # None: leave the option out


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return make_hospital_export(tmp_path_factory.mktemp("hospital") / "export", n_patients=4)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> Path:
    return make_hospital_export(tmp_path_factory.mktemp("hospital") / "export", n_patients=4, faults=True)


# ------------------------------------------------------------------ the csv route
def test_hospital_export_reads_without_a_file_column(export):
    df, report = read_dataset("hosp", hospital_cfg(export))
    # 4 patients x 2 visits x 2 eyes, less the one the grader marked ungradable
    assert len(df) == 15 and df["patient_id"].nunique() == 4
    assert df["image_id"].is_unique and df["image_id"].iloc[0] == "0004100_20210301_OD"
    assert df["path"].iloc[0] == "images/0004100/2021-03-01/0004100_20210301_OD.jpg"
    assert set(df["eye"]) == {"L", "R"} and set(df["glaucoma"].astype(int)) == {0, 1}
    (ex,) = report["excluded"]
    assert ex["reason"] == "grader quality: reject" and ex["image_id"] == "0004137_20210302_OS" and ex["row"] == "8"
    assert option_problems("hosp", hospital_cfg(export)) == []


def test_quality_reject_can_be_kept_and_a_user_manifest_quality_reject_is_excluded(export, tmp_path):
    df, _ = read_dataset("hosp", hospital_cfg(export, on_quality_reject="keep"))
    assert len(df) == 16 and (df["quality"] == "reject").sum() == 1
    man = tmp_path / "m.csv"
    pd.DataFrame({"image_id": ["a", "b"], "path": [p for p in df["path"][:2]], "quality": ["good", "reject"]}).to_csv(man, index=False)
    out, report = read_dataset("mine", {"adapter": "manifest", "root": str(export), "path": str(man)})
    assert list(out["image_id"]) == ["a"] and report["excluded"][0]["reason"] == "grader quality: reject"


def test_dates_in_another_format_and_wide_rows_with_both_eyes(tmp_path):
    root = tmp_path / "clinic"
    for name in ("P1_0203_R.png", "P1_0203_L.png", "P2_1505_R.png", "P2_1505_L.png"):
        (root / "img").mkdir(parents=True, exist_ok=True)
        (root / "img" / name).write_bytes(b"")
    (root / "sheet.csv").write_text("Export of 2024\n\nPatient;Date;Dx right;Dx left\n"
                                    .replace(";", ",") + "P1,02.03.2021,G,N\nP2,15.05.2021,N,N\n")
    cfg = {"adapter": "csv", "root": str(root), "labels_file": "sheet.csv", "header_row": 3,
           "date_columns": {"Date": "%d.%m.%Y"}, "path_template": "img/{Patient}_{Date:%d%m}_{eye}.png",
           "id_template": "{Patient}_{Date:%Y%m%d}_{eye_odos}", "patient_col": "Patient",
           "eyes": {"R": {"Dx": "Dx right"}, "L": {"Dx": "Dx left"}},
           "label_map": {"glaucoma": "Dx"}, "value_map": {"glaucoma": {"G": 1, "N": 0}}}
    df, _ = read_dataset("c", cfg)
    assert list(df["image_id"]) == ["P1_20210302_OD", "P1_20210302_OS", "P2_20210515_OD", "P2_20210515_OS"]
    assert list(df["eye"]) == ["R", "L", "R", "L"] and list(df["glaucoma"].astype(int)) == [1, 0, 0, 0]


def test_template_and_date_errors_are_problems_naming_file_row_and_column(tmp_path, capsys):
    root = tmp_path / "c"
    root.mkdir()
    (root / "t.csv").write_text("MRN,Visit\n001,2021-03-02\n002,03/04/2021\n003,\n")
    base = {"adapter": "csv", "root": str(root), "labels_file": "t.csv", "date_columns": {"Visit": None},
            "path_template": "{MRN}/{Visit:%Y%m%d}.jpg"}
    with pytest.raises(ManifestError) as e:
        read_dataset("c", base)
    probs = e.value.problems
    bad_date = [p for p in probs if p["column"] == "Visit"]
    assert len(bad_date) == 1 and bad_date[0]["row"] == 3 and bad_date[0]["value"] == "03/04/2021"
    assert bad_date[0]["file"].endswith("t.csv") and "date_columns" in bad_date[0]["message"]
    # an empty date cannot be formatted with %Y: a problem on that row, not a traceback
    (fmt,) = [p for p in probs if p["column"] == "path_template"]
    assert fmt["row"] == 4 and "MRN=003" in fmt["value"]
    # a field that is no column: named, with the closest column
    with pytest.raises(ManifestError) as e:
        read_dataset("c", {**base, "path_template": "{mrn}/{Visit:%Y%m%d}.jpg"})
    (p,) = e.value.problems
    assert p["column"] == "path_template" and "did you mean 'MRN'" in p["message"]
    # the rows that did read are checked in the same run: row 2's image is missing
    assert [p["row"] for p in probs if "image file missing" in p["message"]] == [2]
    rc = ingest_main(["--name", "c", "--config-json", json.dumps(base), "--out", str(tmp_path / "m.csv")])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and "row 3" in err


def test_unlisted_images_error_when_asked(export):
    extra = export / "images" / "0004100" / "2023-01-01" / "0004100_20230101_OD.jpg"
    extra.parent.mkdir(parents=True)
    extra.write_bytes((export / "images" / "0004100" / "2021-03-01" / "0004100_20210301_OD.jpg").read_bytes())
    try:
        with pytest.raises(ManifestError) as e:
            read_dataset("hosp", hospital_cfg(export))
        (p,) = e.value.problems
        assert p["file"] == str(extra) and "no label" in p["message"]
        _, report = read_dataset("hosp", hospital_cfg(export, on_unlabelled="report"))
        assert report["unlabelled_images"] == ["images/0004100/2023-01-01/0004100_20230101_OD.jpg"]
    finally:
        extra.unlink()
        extra.parent.rmdir()


# --------------------------------------------------------------- every problem, written
def test_every_problem_goes_to_the_problems_file(tmp_path, capsys):
    root = tmp_path / "c"
    root.mkdir()
    (root / "t.csv").write_text("file,dx\n" + "".join(f"img{i}.png,1\n" for i in range(40)))
    cfg = {"adapter": "csv", "root": str(root), "labels_file": "t.csv", "image_col": "file",
           "label_map": {"glaucoma": "dx"}}
    problems = tmp_path / "logs" / "c.problems.csv"
    rc = ingest_main(["--name", "c", "--config-json", json.dumps(cfg), "--out", str(tmp_path / "m.csv"),
                      "--problems", str(problems)])
    err = capsys.readouterr().err
    assert rc == 1 and ".problems" not in err.replace(str(problems), "") and str(problems) in err
    assert "and 15 more" in err
    table = pd.read_csv(problems, dtype=str)
    assert len(table) == 40 and list(table.columns) == ["file", "row", "column", "value", "message"]
    assert set(table["row"]) == {str(i) for i in range(2, 42)}
    # without --problems every one is printed
    assert ingest_main(["--name", "c", "--config-json", json.dumps(cfg), "--out", str(tmp_path / "m.csv")]) == 1
    assert capsys.readouterr().err.count("image file missing") == 40
    # fixed: ingest succeeds and the stale problems file goes
    for i in range(40):
        (root / f"img{i}.png").write_bytes(b"")
    assert ingest_main(["--name", "c", "--config-json", json.dumps(cfg), "--out", str(tmp_path / "m.csv"),
                        "--problems", str(problems)]) == 0
    assert not problems.exists()


def test_all_images_excluded_is_an_error(tmp_path, capsys):
    root = tmp_path / "c"
    root.mkdir()
    (root / "t.csv").write_text("file,dx\na.png,1\nb.png,0\n")
    cfg = {"adapter": "csv", "root": str(root), "labels_file": "t.csv", "image_col": "file",
           "label_map": {"glaucoma": "dx"}, "on_missing": "exclude"}
    out = tmp_path / "m.csv"
    assert ingest_main(["--name", "c", "--config-json", json.dumps(cfg), "--out", str(out)]) == 1
    assert "all 2 listed images were excluded (2 image file missing)" in capsys.readouterr().err
    assert not out.exists()


def test_a_symlink_out_of_the_root_is_refused_naming_the_file(tmp_path):
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"")
    root = tmp_path / "c"
    root.mkdir()
    (root / "ok.png").write_bytes(b"")
    os.symlink(outside, root / "link.png")
    os.symlink(root, tmp_path / "rootlink")  # a root reached through a link is fine
    (root / "t.csv").write_text("file,dx\nok.png,1\nlink.png,0\n")
    cfg = {"adapter": "csv", "labels_file": "t.csv", "image_col": "file", "label_map": {"glaucoma": "dx"}}
    with pytest.raises(ManifestError) as e:
        read_dataset("c", {**cfg, "root": str(root)})
    (p,) = e.value.problems
    assert p["value"] == "link.png" and p["row"] == 3 and str(outside) in p["message"] and "outside" in p["message"]
    (root / "t.csv").write_text("file,dx\nok.png,1\n")
    df, _ = read_dataset("c", {**cfg, "root": str(tmp_path / "rootlink")})
    assert list(df["image_id"]) == ["ok"]


# ------------------------------------------------------------------ check-dataset
def test_near_collisions():
    assert near_collisions(["0004174", "4174", "AB-12", "ab12", "x"]) == [["0004174", "4174"], ["AB-12", "ab12"]]
    assert near_collisions(["10", "100", "1"]) == []


def test_check_dataset_reports_each_planted_fault(faulty, tmp_path, capsys):
    r = check_dataset("hosp", hospital_cfg(faulty))
    assert r["status"] == "errors"
    im = r["images"]
    assert (im["listed"], im["found"], im["missing"], im["unlisted"]) == (17, 16, 1, 2)
    (miss,) = r["missing"]
    # the MRN typed without leading zeros: missing, with the file that is on disk, and a near-collision
    assert miss["path"] == "images/4100/2021-07-01/4100_20210701_OD.jpg" and miss["row"] == "5"
    assert miss["near"] == ["images/0004100/2021-07-01/0004100_20210701_OD.jpg"]
    assert r["collisions"]["near_patient_ids"] == [["0004100", "4100"]]
    assert r["collisions"]["duplicate_image_ids"] == ["0004137_20210702_OD"]
    assert "images/0004100/2022-01-15/0004100_20220115_OD.jpg" in r["unlisted"]
    assert r["unknown_values"] == [{"column": "Diagnosis", "value": "Glaucoma suspect?", "rows": 1}]
    assert r["labels"]["glaucoma"]["unknown"] == 1
    assert r["patients"]["n"] == 5 and r["patients"]["eyes"]["R"] == 9
    msgs = [p["message"] for p in r["errors"]]
    assert any("image file missing; on disk" in m for m in msgs)
    assert any("duplicate image_id" in m for m in msgs)
    assert sum("no label (on_unlabelled: error)" in m for m in msgs) == 2

    # the CLI: text, JSON, exit status
    cfg_path = tmp_path / "my.yaml"
    config = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    config["datasets"]["hosp"] = hospital_cfg(faulty)
    config["tasks"]["glaucoma_hosp"] = {"type": "binary", "label": "glaucoma", "classes": ["no", "yes"],
                                        "datasets": ["hosp"], "inits": ["random"], "fractions": [1.0], "seeds": [0]}
    cfg_path.write_text(yaml.safe_dump(config))
    js = tmp_path / "check.json"
    assert check_dataset_main(["hosp", "--config", str(cfg_path), "--json", str(js)]) == 1
    text = capsys.readouterr().out
    for needle in ("1 missing", "2 on disk but unlisted", "'Glaucoma suspect?'", "0004100 ~ 4100",
                   "duplicate image ids", "glaucoma_hosp (development, kfold)", "groups by patient"):
        assert needle in text, needle
    assert json.loads(js.read_text())["images"]["missing"] == 1
    # told to exclude missing files and only report unlisted ones, the duplicate is the one error left
    r = check_dataset("hosp", hospital_cfg(faulty, on_unlabelled="report", on_missing="exclude"))
    assert [p["message"].split(" (")[0] for p in r["errors"]] == ["duplicate image_id"]
    assert any("image file missing" in w for w in r["warnings"]) and any("no row lists" in w for w in r["warnings"])


def test_check_dataset_on_a_clean_export_exits_zero(export, tmp_path, capsys):
    r = check_dataset("hosp", hospital_cfg(export))
    assert r["errors"] == [] and r["images"]["in_manifest"] == 15 and r["collisions"]["near_patient_ids"] == []
    assert r["splits"] == {"(none)": 15}
    cfg_path = tmp_path / "my.yaml"
    config = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    config["datasets"]["hosp"] = hospital_cfg(export)
    cfg_path.write_text(yaml.safe_dump(config))
    assert check_dataset_main(["hosp", "--config", str(cfg_path)]) == 0
    assert "dataset 'hosp' (csv adapter" in capsys.readouterr().out
    # an unknown dataset name: usage error naming the datasets there are
    assert check_dataset_main(["nope", "--config", str(cfg_path)]) == 2
    assert "hosp" in capsys.readouterr().err


def test_check_dataset_without_patient_ids_warns(export):
    r = check_dataset("hosp", hospital_cfg(export, patient_col=None))
    assert r["patients"]["images_without_patient_id"] == 15
    assert any("no patient ids" in w for w in r["warnings"])
    assert "no patient ids" in format_text(r)


def test_patient_template_pads_an_mrn_that_lost_its_zeros(faulty):
    cfg = hospital_cfg(faulty, on_unlabelled="report", patient_col=None, patient_template="{MRN:0>7}",
                       path_template="images/{MRN:0>7}/{Visit date:%Y-%m-%d}/{MRN:0>7}_{Visit date:%Y%m%d}_{Eye}.jpg")
    r = check_dataset("hosp", cfg)
    assert r["images"]["missing"] == 0 and r["collisions"]["near_patient_ids"] == [] and r["patients"]["n"] == 4
    assert option_problems("hosp", cfg) == []


# ------------------------------------------------- docs/adding-a-dataset.md, as written
def doc_block(marker: str, lang: str) -> str:
    """The fenced ``lang`` block right after the ``<!-- tested: marker`` comment of the doc."""
    text = (REPO / "docs" / "adding-a-dataset.md").read_text()
    start = text.index(f"<!-- tested: {marker}")
    block = text[start:].split(f"```{lang}\n", 1)[1].split("```", 1)[0]
    return block


def _run(cmd: str, wd: Path) -> "subprocess.CompletedProcess":
    import shlex
    import subprocess
    import sys

    argv = shlex.split(cmd)
    if argv[0] == "snakemake":
        argv = [sys.executable, "-m", "snakemake", *argv[1:]]
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=f"sqlite:///{wd}/results/mlflow.db")
    return subprocess.run(argv, cwd=wd, capture_output=True, text=True, env=env)


def _plan(p) -> dict[str, int]:
    """Job counts of a dry run's 'Job stats' table."""
    text = p.stdout + p.stderr
    stats = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    out = {}
    for line in stats.splitlines()[3:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            out[parts[0]] = int(parts[1])
    return out


@pytest.mark.slow
def test_the_hospital_walkthrough_runs_as_written(tmp_path):
    """Every command of the doc's hospital section, in order, on the export it describes,
    with the doc's own config block merged into tests/configs/tiny.yaml (its upstream set).
    The last line, the full study, is run as a dry run (`-n`): training the grid is what
    test_add_dataset.py's end-to-end test does; here it must plan the whole study."""
    from test_add_dataset import copy_workflow

    wd = copy_workflow(tmp_path)
    make_hospital_export(wd / "data" / "hospital", n_patients=8)
    doc = yaml.safe_load(doc_block("hospital config", "yaml"))
    cfg = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    cfg["datasets"] = {"up": cfg["datasets"]["up"], **doc["datasets"]}
    cfg["datasets"]["up"]["synth"]["patients"] = 8  # only drawn and preprocessed here: keep it small
    cfg["tasks"] = doc["tasks"]
    cfg["report"]["cam"], cfg["mlflow"] = False, {"enabled": False}
    (wd / "my.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    commands = [c for c in doc_block("hospital commands", "bash").splitlines() if c.strip()]
    assert commands[0].startswith("fundusfm check-dataset hospital")
    for cmd in commands:
        full_run = cmd.startswith("snakemake") and "--until" not in cmd and " -n" not in cmd
        p = _run(cmd + (" -n" if full_run else ""), wd)
        assert p.returncode == 0, f"{cmd}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        if cmd.startswith("fundusfm check-dataset"):
            assert "images: 32 listed, 32 found, 0 missing, 0 on disk but unlisted, 1 excluded" in p.stdout, p.stdout
        if full_run or " -n" in cmd:
            plan = _plan(p)
            assert plan.get("finetune", 0) == 5 * 4 * 2 and "ingest" not in plan, plan
    man = pd.read_csv(wd / "results" / "manifests" / "hospital.csv", dtype=str)
    assert len(man) == 31 and man["patient_id"].nunique() == 8
    assert (wd / "results" / "preprocessed" / "hospital" / "qc.csv").is_file()

    # this dataset's preprocessing settings rerun its preprocessing only (not ingest, not `up`)
    cfg["datasets"]["hospital"]["preprocess"] = {"max_reject_fraction": 0.3, "thresholds": {"reject_min_contrast": 0.04}}
    (wd / "my.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    p = _run("snakemake --cores all --configfile my.yaml --until overlap -n", wd)
    assert p.returncode == 0, p.stderr[-3000:]
    assert _plan(p) == {"preprocess": 1, "overlap": 1}, _plan(p)
    assert "dataset=hospital" in p.stdout and "dataset=up" not in p.stdout

    # a preprocess that rejects too much fails, and keeps its QC table and gallery for the user
    cfg["datasets"]["hospital"]["preprocess"]["thresholds"] = {"usable_min_sharpness": 50.0, "reject_min_sharpness": 40.0}
    (wd / "my.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    p = _run("snakemake --cores all --configfile my.yaml --until overlap", wd)
    assert p.returncode != 0
    kept = wd / "results" / "logs" / "preprocess" / "hospital"
    qc = pd.read_csv(kept / "qc.csv", dtype=str)
    assert len(qc) == 31 and (qc["status"] == "rejected").all() and (kept / "gallery.png").stat().st_size > 0
    assert not (wd / "results" / "preprocessed" / "hospital" / "qc.csv").exists()  # Snakemake removed the output
    assert str(Path("results/logs/preprocess/hospital")) in (wd / "results" / "logs" / "preprocess" / "hospital.log").read_text()

    # the sheet edited (the usual slips planted): ingest reruns, fails, and every problem stays in the logs
    make_hospital_export(wd / "data" / "hospital", n_patients=8, faults=True)
    p = _run("snakemake --cores all --configfile my.yaml --until overlap", wd)
    assert p.returncode != 0 and "rule ingest" in p.stderr
    problems = pd.read_csv(wd / "results" / "logs" / "ingest" / "hospital.problems.csv", dtype=str)
    assert len(problems) == 4 and problems["message"].str.contains("duplicate image_id").sum() == 1
    assert "all of them are listed in results/logs/ingest/hospital.problems.csv" in (
        wd / "results" / "logs" / "ingest" / "hospital.log").read_text()


def test_on_unlabelled_error_without_a_glob_is_a_config_problem(export):
    cfg = hospital_cfg(export)
    del cfg["image_glob"]
    (p,) = option_problems("hosp", cfg)
    assert p["column"] == "datasets.hosp.on_unlabelled" and "image_glob" in p["message"]


def test_check_dataset_on_a_public_layout_with_planted_faults(tmp_path, capsys):
    """ODIR-5K as tests/fixtures_datasets.py builds it (its layout sources are cited there),
    then: one listed photo deleted, one photo no row lists, an unknown keyword, an ID entered twice."""
    import shutil

    import fixtures_datasets as fx
    from openpyxl import load_workbook

    cfg = fx.build("odir5k", tmp_path / "odir")
    clean, _ = read_dataset("odir", cfg)
    root = Path(cfg["root"])
    assert check_dataset("odir", cfg)["errors"] == []
    gone = root / clean["path"].iloc[0]
    gone.unlink()
    extra = (root / clean["path"].iloc[1]).with_name("9999_left.jpg")
    shutil.copy(root / clean["path"].iloc[1], extra)
    (book,) = [p for p in root.rglob("*.xlsx") if "data" in p.name.lower()]
    wb = load_workbook(book)
    ws = wb.active
    header_row = next(r for r in ws.iter_rows() if any(c.value == "Left-Diagnostic Keywords" for c in r))
    col = next(c.column for c in header_row if c.value == "Left-Diagnostic Keywords")
    last = ws.max_row
    ws.cell(row=last, column=col, value="zzz unheard finding")
    ws.append([c.value for c in ws[last]])  # the same patient and images entered twice
    wb.save(book)

    r = check_dataset("odir", cfg)
    assert r["status"] == "errors"
    assert [m["image_id"] for m in r["missing"]] == [clean["image_id"].iloc[0]]
    assert extra.relative_to(root).as_posix() in r["unlisted"] + r["other_images_on_disk"]
    assert any(u["value"] == "zzz unheard finding" for u in r["unknown_values"])
    assert r["collisions"]["duplicate_image_ids"]
    text = format_text(r)
    assert "zzz unheard finding" in text and "1 missing" in text and "duplicate image ids" in text


def test_check_dataset_agrees_with_ingest_on_every_fixture(tmp_path):
    """On each adapter's fixture (tests/fixtures_datasets.py), the check finds what ingest reads."""
    import fixtures_datasets as fx

    for name in fx.BUILDERS:
        cfg = fx.build(name, tmp_path / name)
        df, _ = read_dataset(name, cfg)
        r = check_dataset(name, cfg)
        assert r["errors"] == [], (name, r["errors"])
        assert r["images"]["in_manifest"] == len(df) and r["images"]["missing"] == 0, (name, r["images"])
        assert r["patients"]["n"] == df["patient_id"].nunique(), name


def test_an_eye_value_that_is_no_eye_is_reported(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    for n in ("a", "b"):
        (root / f"{n}.png").write_bytes(b"")
    (root / "t.csv").write_text("file,side\na.png,OD\nb.png,OU\n")
    df, report = read_dataset("c", {"adapter": "csv", "root": str(root), "labels_file": "t.csv", "image_col": "file",
                                    "eye_col": "side"})
    assert list(df["eye"]) == ["R", "U"]
    (u,) = report["unmapped"]
    assert (u["row"], u["column"], u["value"]) == (3, "side", "OU")


def test_a_dataset_preprocess_block_is_checked_by_the_config_schema(tmp_path, export):
    from fundusfm import config as fcfg

    config = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    config["datasets"]["hosp"] = hospital_cfg(export, preprocess={"max_reject_fraction": 1.5})
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(fcfg.ConfigError) as e:
        fcfg.load(path)
    assert "datasets.hosp.preprocess.max_reject_fraction" in str(e.value)
    config["datasets"]["hosp"]["preprocess"] = {"max_reject_fractoin": 0.3}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(fcfg.ConfigError) as e:
        fcfg.load(path)
    assert "max_reject_fractoin" in str(e.value)

"""Each adapter reads a tiny copy of its dataset (exact layout and quirks) into the manifest."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import fixtures_datasets as fx
from fundusfm.data.adapters import get_adapter, list_adapters, read_dataset
from fundusfm.data.manifest import ID_COLUMNS


def ingest(name, tmp_path, **extra):
    cfg = {**fx.build(name, tmp_path / name), **extra}
    return read_dataset(name, cfg)


def by_id(df):
    return df.set_index("image_id")


def test_every_fixture_gives_a_contract_manifest(tmp_path):
    for name in fx.BUILDERS:
        df, report = ingest(name, tmp_path)
        assert list(df.columns[:6]) == list(ID_COLUMNS), name
        assert df["image_id"].is_unique, name
        assert (df["dataset"] == name).all()
        assert set(df["eye"]) <= {"L", "R", "U"}
        assert all((tmp_path / name / p).is_file() for p in df["path"]), name
        json.dumps(report)  # the report is JSON-serialisable


def test_aptos_grades_and_unlabelled_test_images(tmp_path):
    df, report = ingest("aptos2019", tmp_path)
    assert len(df) == len(fx.APTOS_TRAIN)
    assert dict(zip(df["image_id"], df["dr_grade"])) == dict(fx.APTOS_TRAIN)
    assert (df["split"] == "train").all() and (df["patient_id"] == df["image_id"]).all()
    # DR grade 0 says nothing about other diseases: abnormal stays unknown, DR > 0 is abnormal
    d = by_id(df)
    assert pd.isna(d.loc["002c21358ce6", "abnormal"]) and d.loc["001639a390f0", "abnormal"] == 1
    df2, _ = ingest("aptos2019", tmp_path / "again", include_unlabelled=True)
    assert (df2["split"] == "test").sum() == 2 and df2.loc[df2["split"] == "test", "dr_grade"].isna().all()


def test_eyepacs_patient_and_eye_from_name_and_official_test(tmp_path):
    df, _ = ingest("eyepacs", tmp_path)
    d = by_id(df)
    assert len(df) == 10 and df["patient_id"].nunique() == 5
    assert (d.loc["13_right", ["patient_id", "eye", "dr_grade", "split"]].tolist() == ["13", "R", 2, "train"])
    assert (d.loc["3_left", ["patient_id", "eye", "split"]].tolist() == ["3", "L", "test"])
    assert "Usage=Public" in d.loc["3_left", "source_label"]


def test_eyeq_quality_grades_over_eyepacs_names(tmp_path):
    df, _ = ingest("eyeq", tmp_path)
    d = by_id(df)
    assert d.loc["10_left", "quality"] == "good" and d.loc["10_right", "quality"] == "reject"
    assert d.loc["13_right", "quality"] == "usable" and d.loc["13_right", "dr_grade"] == 2
    assert d.loc["3_left", "split"] == "test" and d.loc["3_left", "patient_id"] == "3"


def test_idrid_trailing_space_column_empty_columns_and_reused_names(tmp_path):
    df, report = ingest("idrid", tmp_path)
    assert len(df) == 6  # the blank trailing line is not an image
    d = by_id(df)
    assert d.loc["train-IDRiD_001", ["dr_grade", "dme_grade", "dme"]].tolist() == [3, 2, 1]
    assert d.loc["test-IDRiD_001", ["dr_grade", "dme_grade", "dme"]].tolist() == [4, 1, 1]
    assert "Testing Set" in d.loc["test-IDRiD_001", "path"] and "Training Set" in d.loc["train-IDRiD_001", "path"]
    assert d.loc["train-IDRiD_002", "dme"] == 0


def test_messidor_extension_case_and_ungradable(tmp_path):
    df, report = ingest("messidor2", tmp_path)
    d = by_id(df)
    assert d.loc["IMG0001", "path"].endswith("IMG0001.JPG") and d.loc["IMG0001", "dr_grade"] == 2
    assert pd.isna(d.loc["IMG0002", "dr_grade"]) and d.loc["IMG0002", "quality"] == "reject"
    assert d.loc["IMG0003", "dme"] == 1
    assert any("pairs file" in w for w in report["warnings"])


def test_messidor_pairs_file_groups_patients(tmp_path):
    cfg = fx.build("messidor2", tmp_path / "m")
    fx.write_csv(tmp_path / "m" / "messidor-2.csv", ["image1", "image2"], [["IMG0001.jpg", "IMG0002.jpg"]])
    df, _ = read_dataset("messidor2", cfg)
    d = by_id(df)
    assert d.loc["IMG0001", "patient_id"] == d.loc["IMG0002", "patient_id"] != d.loc["IMG0003", "patient_id"]


def test_odir_per_eye_labels_from_keywords(tmp_path):
    df, report = ingest("odir5k", tmp_path)
    d = by_id(df)
    assert len(df) == 2 * len(fx.ODIR) and d.loc["0_left", "patient_id"] == "0"
    assert d.loc["0_left", "cataract"] == 1 and d.loc["0_right", "cataract"] == 0  # patient flag C=1 covers one eye
    assert d.loc["0_right", "normal"] == 1 and d.loc["0_left", "abnormal"] == 1
    assert d.loc["2_left", "dr_grade"] == 2 and d.loc["2_left", "other"] == 1 and d.loc["2_right", "other"] == 0
    assert d.loc["4_right", "normal"] == 1  # 'lens dust' is a quality remark, not a disease
    assert d.loc["5_left", "glaucoma_suspect"] == 1 and pd.isna(d.loc["5_left", "glaucoma"])
    assert d.loc["5_right", ["rvo", "brvo", "crvo"]].tolist() == [1, 1, 0]
    assert d.loc["6_left", ["normal", "abnormal", "dr_grade"]].isna().all()  # only 'low image quality'
    assert d.loc["6_right", "myopia"] == 1 and d.loc["8_right", "dr_grade"] == 4
    # an unknown keyword is reported and leaves `other` unknown, never guessed
    assert report["unmapped_labels"] == {"suspected retinitis pigmentosa": 1}
    assert pd.isna(d.loc["8_left", "other"]) and d.loc["8_left", "amd"] == 1
    assert report["warnings"] == []  # patient flags agree with the eyes


def test_odir_flag_disagreement_is_reported(tmp_path):
    from openpyxl import load_workbook

    cfg = fx.build("odir5k", tmp_path / "o")
    xlsx = tmp_path / "o" / "ODIR-5K" / "data.xlsx"
    wb = load_workbook(xlsx)
    wb.active["J2"] = 1  # G flag for patient 0, whose keywords say cataract / normal
    wb.save(xlsx)
    _, report = read_dataset("odir5k", cfg)
    assert any("row 2" in w and "G=1" in w for w in report["warnings"])


def test_rfmid_splits_and_disease_columns(tmp_path):
    df, _ = ingest("rfmid", tmp_path)
    assert df["split"].value_counts().to_dict() == {"train": 4, "val": 2, "test": 2}
    d = by_id(df)
    assert d.loc["train-2", ["normal", "abnormal"]].tolist() == [1, 0]
    assert pd.isna(d.loc["train-1", "dr_grade"]) and d.loc["train-2", "dr_grade"] == 0
    assert d.loc["train-3", ["amd", "other"]].tolist() == [1, 1]  # ODC feeds `other`
    assert d.loc["test-2", ["rvo", "crvo", "brvo", "other"]].tolist() == [1, 1, 0, 1]
    assert d.loc["val-1", "myopia"] == 1 and d.loc["test-1", "hypertensive"] == 1
    assert d.loc["val-1", "path"].startswith("Evaluation_Set/") and d.loc["test-1", "path"].startswith("Test_Set/")


def test_papila_messy_header_eyes_and_suspects(tmp_path):
    df, report = ingest("papila", tmp_path)
    d = by_id(df)
    assert len(df) == 6 and set(df["patient_id"]) == {"002", "004", "005"}
    assert d.loc["RET004OD", ["eye", "glaucoma"]].tolist() == ["R", 1]
    assert d.loc["RET005OD", "glaucoma_suspect"] == 1 and pd.isna(d.loc["RET005OD", "glaucoma"])
    assert d.loc["RET005OS", ["eye", "glaucoma"]].tolist() == ["L", 0]
    assert report["unlabelled_images"] == []  # contour images are not photographs


def test_jsiec_class_folders(tmp_path):
    df, report = ingest("jsiec", tmp_path)
    assert len(df) == sum(fx.JSIEC.values())
    by_cls = df.groupby("source_label").first()
    assert by_cls.loc["0.0.Normal", "normal"] == 1
    assert by_cls.loc["1.0.DR2", "dr_grade"] == 2
    assert pd.isna(by_cls.loc["1.1.DR3", "dr_grade"]) and by_cls.loc["1.1.DR3", "abnormal"] == 1
    assert by_cls.loc["2.0.BRVO", "brvo"] == 1 and by_cls.loc["9.Pathological myopia", "myopia"] == 1
    assert by_cls.loc["10.0.Possible glaucoma", "glaucoma_suspect"] == 1
    assert by_cls.loc["0.1.Tessellated fundus", ["normal", "abnormal"]].isna().all()
    assert report["unmapped"] == []


def test_jsiec_unknown_folder_is_reported_not_guessed(tmp_path):
    cfg = fx.build("jsiec", tmp_path / "j")
    fx.write_image(tmp_path / "j" / "1000images" / "40.Mystery" / "9999.jpg")
    df, report = read_dataset("jsiec", cfg)
    assert report["unmapped_labels"] == {"40.Mystery": 1}
    row = by_id(df).loc["9999"]
    assert row[["normal", "abnormal", "dr_grade", "other"]].isna().all()


def test_glaucoma_fundus_and_refuge(tmp_path):
    df, _ = ingest("glaucoma_fundus", tmp_path)
    assert df["glaucoma"].tolist().count(1) == 3 and df["glaucoma"].tolist().count(0) == 3
    df, report = ingest("refuge", tmp_path)
    d = by_id(df)
    assert df["split"].value_counts().to_dict() == {"train": 5, "val": 2, "test": 2}
    assert d.loc["g0001", "glaucoma"] == 1 and d.loc["n0003", "glaucoma"] == 0
    assert d.loc["V0001", "glaucoma"] == 1 and d.loc["T0002", "glaucoma"] == 1 and d.loc["T0001", "glaucoma"] == 0
    assert d.loc["V0001", "path"] == "REFUGE-Validation400/V0001.jpg"  # not the mask with the same name
    assert report["unlabelled_images"] == []


def test_deepdrid_windows_paths_and_per_eye_grades(tmp_path):
    df, _ = ingest("deepdrid", tmp_path)
    d = by_id(df)
    assert d.loc["1_l1", "path"] == "regular_fundus_images/regular-fundus-training/Images/1/1_l1.jpg"
    assert d.loc["1_l1", ["patient_id", "eye", "dr_grade"]].tolist() == ["1", "L", 2]
    assert d.loc["1_r2", ["eye", "dr_grade"]].tolist() == ["R", 1]
    assert d.loc["3_r1", ["split", "dr_grade"]].tolist() == ["val", 3]


def test_retfound_layout_and_generic_imagefolder(tmp_path):
    df, _ = ingest("retfound", tmp_path)
    assert df["split"].value_counts().to_dict() == {"train": 4, "val": 2, "test": 2}
    assert sorted(df["dr_grade"].tolist()) == [0, 0, 0, 0, 1, 2, 3, 4]
    df, _ = ingest("imagefolder", tmp_path)
    assert df.groupby("source_label")["normal"].first().to_dict() == {"cataract": 0, "healthy": 1}


def test_generic_csv_mapping_reports_unmapped_values(tmp_path):
    df, report = ingest("csv", tmp_path)
    d = by_id(df)
    assert d.loc["a1", ["patient_id", "eye", "split", "glaucoma"]].tolist() == ["MRN001", "R", "train", 1]
    assert d.loc["b1", ["eye", "split", "glaucoma"]].tolist() == ["R", "test", 0]
    assert pd.isna(d.loc["c1", "glaucoma"]) and report["unmapped_labels"] == {"NTG": 1}


def test_user_manifest_adapter(tmp_path):
    df, _ = ingest("manifest", tmp_path)
    assert df["patient_id"].tolist() == ["A", "A", "B"] and df["glaucoma"].tolist() == [1, 0, 0]


def test_registry_names_and_unknown_adapter():
    assert {"aptos2019", "eyepacs", "idrid", "messidor2", "odir5k", "rfmid", "papila", "jsiec", "glaucoma_fundus",
            "refuge", "eyeq", "deepdrid", "retfound", "csv", "imagefolder", "manifest", "synth"} <= set(list_adapters())
    assert get_adapter("ODIR").name == "odir5k"
    with pytest.raises(KeyError, match="available"):
        get_adapter("nope")


def test_synth_adapter_dispatches_to_the_synth_package(tmp_path):
    synth = pytest.importorskip("fundusfm.synth.dataset")
    synth.make_dataset(tmp_path / "s", n_patients=2, seed=0, scale=0.25, progress=False)
    df, report = read_dataset("demo", {"adapter": "synth", "root": str(tmp_path / "s")})
    assert len(df) == 4 and (df["dataset"] == "demo").all() and df["patient_id"].nunique() == 2
    assert report["adapter"] == "synth"


def test_docs_datasets_md_matches_the_mapping_tables():
    from pathlib import Path

    from fundusfm.data.adapters.docs import BEGIN, END, render_markdown

    text = (Path(__file__).parents[1] / "docs" / "datasets.md").read_text()
    block = text[text.index(BEGIN) + len(BEGIN) + 1:text.index(END)]
    assert block == render_markdown(), "run: python -m fundusfm.data.adapters.docs --write docs/datasets.md"

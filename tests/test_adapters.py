"""Each adapter reads a tiny copy of its dataset (exact layout and quirks) into the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import fixtures_datasets as fx
from fundusfm.data.adapters import get_adapter, list_adapters, read_dataset
from fundusfm.data.manifest import ID_COLUMNS, ManifestError


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


def test_messidor_adcis_pairs_file_is_semicolon_separated_and_groups_both_eyes(tmp_path):
    df, report = ingest("messidor2", tmp_path)
    d = by_id(df)
    assert len(df) == len(fx.MESSIDOR)
    # messidor-2.csv is `left;right ` (trailing space): read with ';', each exam is one patient
    for left, right in fx.MESSIDOR_PAIRS:
        a, b = d.loc[left.rsplit(".", 1)[0]], d.loc[right.rsplit(".", 1)[0]]
        assert a["patient_id"] == b["patient_id"] and (a["eye"], b["eye"]) == ("L", "R")
    assert df["patient_id"].nunique() == len(fx.MESSIDOR_PAIRS)
    assert d.loc["IM000012", "path"] == "IMAGES/IM000012.JPG" and d.loc["IM000012", "dr_grade"] == 2
    assert pd.isna(d.loc["IM000013", "dr_grade"]) and d.loc["IM000013", "quality"] == "reject"
    assert d.loc["IM000014", "dme"] == 1
    assert not any("pairs file" in w for w in report["warnings"]) and report["patient_ids_from_dataset"] is True


def test_messidor_kaggle_copy_id_code_diagnosis_and_preprocess_folder(tmp_path):
    df, report = ingest("messidor2_kaggle", tmp_path)
    d = by_id(df)
    assert len(df) == len(fx.MESSIDOR)
    assert d.loc["IM000012", "path"] == "messidor-2/messidor-2/preprocess/IM000012.JPG"
    assert d.loc["IM000012", "dr_grade"] == 2 and d.loc["20051020_43832_0100_PP", "dr_grade"] == 1
    assert any("pairs file" in w for w in report["warnings"])  # patient = image, and it says so
    assert report["patient_ids_from_dataset"] is False
    # the ADCIS exam list dropped in next to it groups the eyes again
    cfg = fx.build("messidor2_kaggle", tmp_path / "again")
    (tmp_path / "again" / "messidor-2.csv").write_text("left;right \nIM000012.JPG;IM000013.JPG\n")
    d = by_id(read_dataset("messidor2", cfg)[0])
    assert d.loc["IM000012", "patient_id"] == d.loc["IM000013", "patient_id"] != d.loc["IM000014", "patient_id"]


def test_odir_kaggle_layout_reads_training_images_not_the_preprocessed_copies(tmp_path):
    df, report = ingest("odir5k", tmp_path)
    d = by_id(df)
    assert len(df) == 2 * len(fx.ODIR) and d.loc["0_left", "patient_id"] == "0"
    assert d.loc["0_left", "path"] == "ODIR-5K/ODIR-5K/Training Images/0_left.jpg"
    assert report["unlabelled_images"] == []  # neither Testing Images nor preprocessed_images count
    df2, _ = ingest("odir5k", tmp_path / "pre", images_dir="preprocessed_images")
    assert by_id(df2).loc["0_left", "path"] == "preprocessed_images/0_left.jpg"


def test_odir_image_missing_from_training_images_is_missing_not_its_preprocessed_copy(tmp_path):
    cfg = fx.build("odir5k", tmp_path / "odir")
    (Path(cfg["root"]) / "ODIR-5K/ODIR-5K/Training Images/0_left.jpg").unlink()
    with pytest.raises(ManifestError, match="0_left"):
        read_dataset("odir5k", cfg)


def test_odir_full_df_csv_alone_is_read_one_row_per_patient(tmp_path):
    import shutil

    root = fx.build_odir5k(tmp_path / "o")
    shutil.rmtree(root / "ODIR-5K")
    df, _ = read_dataset("odir5k", {"adapter": "odir5k", "root": str(root)})
    assert len(df) == 2 * len(fx.ODIR) and by_id(df).loc["2_left", "path"] == "preprocessed_images/2_left.jpg"
    assert by_id(df).loc["2_left", "dr_grade"] == 2
    # full_df.csv lists only the images it kept: an eye it leaves out is not asked for
    full = pd.read_csv(root / "full_df.csv", dtype=str)
    full[full["filename"] != "4_right.jpg"].to_csv(root / "full_df.csv", index=False)
    (root / "preprocessed_images" / "4_right.jpg").unlink()
    df, _ = read_dataset("odir5k", {"adapter": "odir5k", "root": str(root), "labels_file": "full_df.csv"})
    assert len(df) == 2 * len(fx.ODIR) - 1 and "4_left" in set(df["image_id"])


def test_odir_per_eye_labels_from_keywords(tmp_path):
    df, report = ingest("odir5k", tmp_path)
    d = by_id(df)
    assert d.loc["0_left", "cataract"] == 1 and d.loc["0_right", "cataract"] == 0  # patient flag C=1 covers one eye
    assert d.loc["0_right", "normal"] == 1 and d.loc["0_left", "abnormal"] == 1
    assert d.loc["2_left", "dr_grade"] == 2 and d.loc["2_left", "other"] == 1 and d.loc["2_right", "other"] == 0
    assert d.loc["4_right", "normal"] == 1  # 'lens dust' is a quality remark, not a disease
    assert d.loc["5_left", "glaucoma_suspect"] == 1 and pd.isna(d.loc["5_left", "glaucoma"])
    assert d.loc["5_right", ["rvo", "brvo", "crvo"]].tolist() == [1, 1, 0]
    assert d.loc["6_left", ["normal", "abnormal", "dr_grade"]].isna().all()  # only 'low image quality'
    assert d.loc["6_right", "myopia"] == 1 and d.loc["8_right", "dr_grade"] == 4
    assert d.loc["8_left", "amd"] == 1 and pd.isna(d.loc["8_left", "other"])  # 'suspected retinitis pigmentosa'
    assert report["unmapped_labels"] == {}  # every keyword of the fixture is a real one, and in the table
    assert report["warnings"] == []  # patient flags agree with the eyes


def test_odir_keywords_the_old_table_missed_are_never_read_as_0(tmp_path):
    df, _ = ingest("odir5k", tmp_path)
    d = by_id(df)
    # "old central retinal vein occlusion" is an RVO, not rvo = 0
    assert d.loc["9_left", ["rvo", "crvo"]].tolist() == [1, 1]
    # "suspected moderate non proliferative retinopathy": the DR grade is unknown, not 0
    assert pd.isna(d.loc["9_right", "dr_grade"])
    assert d.loc["10_left", "other"] == 1 and pd.isna(d.loc["10_left", "dr_grade"])  # IRMA: DR of unknown grade
    assert d.loc["10_right", "other"] == 1 and d.loc["11_left", "other"] == 1 and d.loc["11_right", "other"] == 1


def test_odir_unknown_keyword_leaves_every_unset_label_unknown_and_is_counted(tmp_path):
    entries = fx.ODIR + [(12, 50, "Male", "mystery finding", "normal fundus", [0, 0, 0, 0, 0, 0, 0, 1])]
    root = fx.build_odir5k(tmp_path / "o", entries)
    df, report = read_dataset("odir5k", {"adapter": "odir5k", "root": str(root), "max_unknown_fraction": 0.2})
    row = by_id(df).loc["12_left"]
    assert row[["rvo", "dr_grade", "glaucoma", "other", "normal", "abnormal"]].isna().all()  # never 0
    assert by_id(df).loc["12_right", "normal"] == 1
    assert report["unmapped_labels"] == {"mystery finding": 1}
    assert report["unknown_values"]["rvo"] == {"mystery finding": 1}


def test_unknown_values_above_the_share_fail_ingest_naming_them(tmp_path):
    entries = fx.ODIR + [(20 + i, 50, "Male", "mystery finding", "normal fundus", [0] * 8) for i in range(3)]
    root = fx.build_odir5k(tmp_path / "o", entries)
    cfg = {"adapter": "odir5k", "root": str(root)}
    with pytest.raises(ManifestError) as e:  # 3 of 26 eyes = 11.5% > the default 5%
        read_dataset("odir5k", cfg)
    msg = str(e.value)
    assert "'mystery finding' (3)" in msg and "max_unknown_fraction" in msg
    assert {p["column"] for p in e.value.problems} >= {"rvo", "dr_grade", "other"}
    df, _ = read_dataset("odir5k", {**cfg, "max_unknown_fraction": 0.2})
    assert len(df) == 26


def test_odir_flag_disagreement_is_reported(tmp_path):
    from openpyxl import load_workbook

    cfg = fx.build("odir5k", tmp_path / "o")
    xlsx = tmp_path / "o" / "ODIR-5K" / "ODIR-5K" / "data.xlsx"
    wb = load_workbook(xlsx)
    wb.active["J2"] = 1  # G flag for patient 0, whose keywords say cataract / normal
    wb.save(xlsx)
    _, report = read_dataset("odir5k", cfg)
    assert any("row 2" in w and "G=1" in w for w in report["warnings"])


def test_rfmid_real_header_with_crao_splits_and_disease_columns(tmp_path):
    df, _ = ingest("rfmid", tmp_path)
    assert df["split"].value_counts().to_dict() == {"train": 5, "val": 2, "test": 2}
    d = by_id(df)
    assert d.loc["train-2", ["normal", "abnormal"]].tolist() == [1, 0]
    assert pd.isna(d.loc["train-1", "dr_grade"]) and d.loc["train-2", "dr_grade"] == 0
    assert d.loc["train-3", ["amd", "other"]].tolist() == [1, 1]  # ODC feeds `other`
    assert d.loc["train-5", ["other", "abnormal"]].tolist() == [1, 1] and "CRAO" in d.loc["train-5", "source_label"]
    assert d.loc["test-2", ["rvo", "crvo", "brvo", "other"]].tolist() == [1, 1, 0, 1]
    # HR is haemorrhagic retinopathy: `other`, not hypertensive
    assert d.loc["test-1", "other"] == 1 and "hypertensive" not in df.columns
    assert d.loc["val-1", "myopia"] == 1
    assert d.loc["val-1", "path"].startswith("Evaluation_Set/") and d.loc["test-1", "path"].startswith("Test_Set/")


def test_rfmid_label_file_with_the_old_cra_typo_is_refused_naming_crao(tmp_path):
    cfg = fx.build("rfmid", tmp_path / "r")
    csv = tmp_path / "r" / "Training_Set" / "Training_Set" / "RFMiD_Training_Labels.csv"
    csv.write_text(csv.read_text().replace(",CRAO,", ",CRA,"))
    with pytest.raises(ManifestError) as e:
        read_dataset("rfmid", cfg)
    assert [p["column"] for p in e.value.problems] == ["CRAO"]


def test_papila_two_header_rows_and_id_alone_below_them(tmp_path):
    df, report = ingest("papila", tmp_path)
    d = by_id(df)
    assert len(df) == 8 and set(df["patient_id"]) == {"002", "004", "005", "027"}  # data from row 4
    assert d.loc["RET004OD", ["eye", "glaucoma"]].tolist() == ["R", 1]
    assert d.loc["RET002OD", "glaucoma_suspect"] == 1 and pd.isna(d.loc["RET002OD", "glaucoma"])
    assert d.loc["RET002OS", ["eye", "glaucoma"]].tolist() == ["L", 0]
    assert d.loc["RET027OD", "patient_id"] == d.loc["RET027OS", "patient_id"] == "027"
    assert report["unlabelled_images"] == []  # contour images are not photographs


def test_papila_flat_one_row_header_export_also_reads(tmp_path):
    root = tmp_path / "p"
    for tag in ("od", "os"):
        fx.write_xlsx(root / "ClinicalData" / f"patient_data_{tag}.xlsx",
                      [["ID", "Age", "Gender", "Diagnosis"], ["#002", 47, 0, 2], ["#004", 58, 1, 1]])
        for pid in ("002", "004"):
            fx.write_image(root / "FundusImages" / f"RET{pid}{tag.upper()}.jpg")
    df, _ = read_dataset("papila", {"adapter": "papila", "root": str(root)})
    assert len(df) == 4 and by_id(df).loc["RET004OS", "glaucoma"] == 1


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
    with pytest.raises(ManifestError, match="40.Mystery"):  # 1 of 10 images: above the default share
        read_dataset("jsiec", cfg)
    df, report = read_dataset("jsiec", {**cfg, "max_unknown_fraction": 0.2})
    assert report["unmapped_labels"] == {"40.Mystery": 1}
    row = by_id(df).loc["9999"]
    assert row[["normal", "abnormal", "dr_grade", "other"]].isna().all()


def test_glaucoma_fundus_numbering_restarts_per_class_folder(tmp_path):
    df, report = ingest("glaucoma_fundus", tmp_path)
    assert len(df) == sum(fx.GLAUCOMA_FUNDUS.values()) and df["image_id"].is_unique
    d = by_id(df)
    assert d.loc["normal_control__1", "glaucoma"] == 0 and d.loc["early_glaucoma__1", "glaucoma"] == 1
    assert d.loc["advanced_glaucoma__1", "source_label"] == "advanced_glaucoma"
    assert any("repeat" in w for w in report["warnings"])


def test_refuge_folders_and_spreadsheets(tmp_path):
    df, report = ingest("refuge", tmp_path)
    d = by_id(df)
    assert df["split"].value_counts().to_dict() == {"train": 5, "val": 2, "test": 2}
    assert d.loc["g0001", "glaucoma"] == 1 and d.loc["n0003", "glaucoma"] == 0
    assert d.loc["V0001", "glaucoma"] == 1 and d.loc["T0002", "glaucoma"] == 1 and d.loc["T0001", "glaucoma"] == 0
    # not the mask with the same name
    assert d.loc["V0001", "path"] == "REFUGE-Validation400/REFUGE-Validation400/V0001.jpg"
    assert report["unlabelled_images"] == []


def test_deepdrid_at_the_repository_root_with_real_paths_and_uwf_name_reuse(tmp_path):
    df, report = ingest("deepdrid", tmp_path)
    d = by_id(df)
    # `\regular-fundus-training\1\1_r1.jpg` -> the regular image, never ultra-widefield_images/.../1_r1.jpg
    assert d.loc["1_r1", "path"] == "regular_fundus_images/regular-fundus-training/Images/1/1_r1.jpg"
    assert d.loc["2_l1", ["patient_id", "eye", "dr_grade"]].tolist() == ["2", "L", 2]
    assert d.loc["265_r1", ["split", "dr_grade"]].tolist() == ["val", 4]
    assert len(df) == sum(len(v) for v in fx.DEEPDRID.values())
    assert report["unlabelled_images"] == []  # the ultra-widefield images are not the regular set's


def test_deepdrid_grade_in_the_other_eyes_column_is_kept(tmp_path):
    df, report = ingest("deepdrid", tmp_path)
    d = by_id(df)
    # real rows: 56_r3 has its grade under left_eye_DR_Level, 56_l3 under right_eye_DR_Level
    assert d.loc["56_r3", ["eye", "dr_grade"]].tolist() == ["R", 1]
    assert d.loc["56_l3", ["eye", "dr_grade"]].tolist() == ["L", 0]
    assert sum("other eye" in w for w in report["warnings"]) == 2


def test_idrid_unpacked_whole_hints_stay_in_disease_grading(tmp_path):
    df, report = ingest("idrid", tmp_path)
    d = by_id(df)
    # C. Localization reuses IDRiD_001.jpg...: the grading image is taken, not an ambiguity error
    assert d.loc["train-IDRiD_001", "path"] == "B. Disease Grading/1. Original Images/a. Training Set/IDRiD_001.jpg"
    assert d.loc["test-IDRiD_001", "path"].startswith("B. Disease Grading/1. Original Images/b. Testing Set/")
    assert report["unlabelled_images"] == []  # parts A and C are not unlabelled grading images


def test_retfound_layout_and_generic_imagefolder(tmp_path):
    df, _ = ingest("retfound", tmp_path)
    assert df["split"].value_counts().to_dict() == {"train": 4, "val": 2, "test": 2}
    assert sorted(df["dr_grade"].tolist()) == [0, 0, 0, 0, 1, 2, 3, 4]
    df, _ = ingest("imagefolder", tmp_path)
    assert df.groupby("source_label")["normal"].first().to_dict() == {"cataract": 0, "healthy": 1}


def test_retfound_papila_copy_has_glaucoma_negatives_and_bsuspectglaucoma(tmp_path):
    root = fx.build_retfound(tmp_path / "PAPILA", fx.RETFOUND_TREES["papila"])
    df, report = read_dataset("papila", {"adapter": "retfound", "root": str(root)})
    first = df.groupby("source_label").first()
    assert set(df["glaucoma"].dropna().astype(int)) == {0, 1}  # anormal = glaucoma 0, not "normal"
    assert first.loc["anormal", "glaucoma"] == 0 and pd.isna(first.loc["anormal", "normal"])
    assert first.loc["bsuspectglaucoma", "glaucoma_suspect"] == 1 and pd.isna(first.loc["bsuspectglaucoma", "glaucoma"])
    assert report["unmapped"] == [] and any("`papila`" in w for w in report["warnings"])


def test_retfound_retina_anormal_is_a_normal_fundus(tmp_path):
    root = fx.build_retfound(tmp_path / "Retina", fx.RETFOUND_TREES["retina"])
    df, _ = read_dataset("retina", {"adapter": "retfound", "root": str(root)})
    first = df.groupby("source_label").first()
    assert first.loc["anormal", "normal"] == 1 and pd.isna(first.loc["anormal", "glaucoma"])


def test_retfound_ambiguous_folders_ask_for_the_benchmark(tmp_path):
    root = fx.build_retfound(tmp_path / "copy", {"anormal": 1, "cglaucoma": 1})  # PAPILA or Retina?
    with pytest.raises(ManifestError, match="benchmark"):
        read_dataset("x", {"adapter": "retfound", "root": str(root)})
    df, _ = read_dataset("x", {"adapter": "retfound", "root": str(root), "benchmark": "papila"})
    assert df.groupby("source_label")["glaucoma"].first()["anormal"] == 0


def test_generic_csv_mapping_reports_unmapped_values(tmp_path):
    df, report = ingest("csv", tmp_path)
    d = by_id(df)
    assert report["unknown_values"]["glaucoma"] == {"NTG": 1}
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


def test_refuge_spreadsheet_without_a_glaucoma_column_leaves_that_split_unlabelled(tmp_path):
    cfg = fx.build("refuge", tmp_path / "r")
    fx.write_xlsx(tmp_path / "r" / "REFUGE-Validation400-GT" / "Fovea_locations.xlsx",
                  [["ID", "ImgName", "Fovea_X", "Fovea_Y"], [1, "V0001.jpg", 1057.9, 1076.6], [2, "V0002.jpg", 1010.2, 1040.1]])
    df, report = read_dataset("refuge", cfg)
    assert "val" not in set(df["split"]) and any("no glaucoma label column" in w for w in report["warnings"])
    assert set(report["unlabelled_images"]) == {"REFUGE-Validation400/REFUGE-Validation400/V0001.jpg",
                                                "REFUGE-Validation400/REFUGE-Validation400/V0002.jpg"}


def test_odir_table_covers_every_keyword_of_the_real_annotation_file():
    from fundusfm.data.adapters.odir import KEYWORDS, split_keywords

    missing = sorted({k for text in fx.ODIR_REAL_KEYWORDS for k in split_keywords(text) if k not in KEYWORDS})
    assert missing == []


def test_papila_bad_id_with_a_diagnosis_is_an_error_a_note_row_a_warning(tmp_path):
    from openpyxl import load_workbook

    cfg = fx.build("papila", tmp_path / "p")
    xlsx = tmp_path / "p" / "ClinicalData" / "patient_data_od.xlsx"
    wb = load_workbook(xlsx)
    wb.active.append(["Diagnosis: 0 healthy, 1 glaucoma, 2 suspect"])
    wb.save(xlsx)
    df, report = read_dataset("papila", cfg)
    assert len(df) == 8 and any("not a patient row" in w for w in report["warnings"])
    wb.active["A4"] = "patient two"
    wb.save(xlsx)
    with pytest.raises(ManifestError) as e:
        read_dataset("papila", cfg)
    assert [(p["row"], p["value"]) for p in e.value.problems] == [(4, "patient two")]


def test_jsiec_nested_second_copy_of_the_kaggle_tree_is_not_read_twice(tmp_path):
    root = fx.build_jsiec(tmp_path / "j", nested_copy=True)
    df, report = read_dataset("jsiec", {"adapter": "jsiec", "root": str(root)})
    assert len(df) == sum(fx.JSIEC.values()) and df["image_id"].is_unique
    assert (~df["path"].str.startswith("1000images/1000images/")).all()
    assert len(report["excluded"]) == sum(fx.JSIEC.values())
    assert all(x["reason"].startswith("identical copy of 1000images/") for x in report["excluded"])
    assert set(df["image_id"]) == {f"{k:04d}" for k in range(1, len(df) + 1)}  # plain stems again


def test_retfound_copy_unpacked_one_level_deeper_is_still_recognised(tmp_path):
    # RETFound copies are often unpacked as <Name>/<Name>/{train,val,test}/ (e.g. .../PAPILA/PAPILA/test)
    fx.build_retfound(tmp_path / "PAPILA" / "PAPILA", fx.RETFOUND_TREES["papila"])
    df, report = read_dataset("papila", {"adapter": "retfound", "root": str(tmp_path / "PAPILA")})
    assert set(df["split"]) == {"train", "val", "test"} and report["unmapped"] == []
    assert df.groupby("source_label")["glaucoma"].first()["anormal"] == 0

"""`fundusfm split`: manifests + QC tables -> a leak-checked task table."""

import json

import pandas as pd
import pytest

from fundusfm.data.cli import split_main


def write_dataset(tmp_path, name, n_patients=20, qc_status=None):
    rows = []
    for p in range(n_patients):
        for eye in "LR":
            rows.append(dict(image_id=f"{name}{p:02d}{eye}", path=f"images/{p}{eye}.jpg", patient_id=f"P{p}",
                             eye=eye, split="", dataset=name, dr_grade=p % 5, glaucoma=int(p % 3 == 0),
                             abnormal=int(p % 5 > 0 or p % 3 == 0)))
    man = pd.DataFrame(rows)
    man_path = tmp_path / f"{name}.csv"
    man.to_csv(man_path, index=False)
    qc = pd.DataFrame({"image_id": man["image_id"], "status": "ok", "reason": "",
                       "processed_path": "images/" + man["image_id"] + ".png"})
    for image_id, status in (qc_status or {}).items():
        qc.loc[qc.image_id == image_id, ["status", "processed_path"]] = [status, ""]
    qc_path = tmp_path / f"{name}_qc.csv"
    qc.to_csv(qc_path, index=False)
    return man_path, qc_path


def run(tmp_path, task, datasets, **kw):
    args = ["--task-json", json.dumps(task), "--out", str(tmp_path / "task.csv"), "--manifest"]
    args += [f"{d}={tmp_path / f'{d}.csv'}" for d in datasets] + ["--qc"]
    args += [f"{d}={tmp_path / f'{d}_qc.csv'}" for d in datasets] + ["--preprocessed"]
    args += [f"{d}=results/preprocessed/{d}" for d in datasets]
    assert split_main(args) == 0
    return pd.read_csv(tmp_path / "task.csv", dtype={"image_id": str, "patient_id": str}, keep_default_na=False)


def test_multilabel_task_derives_dr_from_grade_and_keeps_qc_failures_as_excluded(tmp_path):
    write_dataset(tmp_path, "dev", qc_status={"dev03L": "rejected"})
    write_dataset(tmp_path, "ext", n_patients=5)
    task = {"name": "t", "type": "multilabel", "labels": ["dr", "glaucoma"], "datasets": ["dev"],
            "external": ["ext"], "split": {"strategy": "kfold", "folds": 4}}
    table = run(tmp_path, task, ["dev", "ext"])
    assert len(table) == 50  # every image of both datasets, none dropped
    row = table.set_index("image_id").loc["dev03L"]
    assert row["fold0"] == "excluded" and row["exclude_reason"] == "qc:rejected" and row["image"] == ""
    assert (table.loc[table.dataset == "ext", "fold0"] == "external").all()
    dev = table[table.dataset == "dev"]
    man = pd.read_csv(tmp_path / "dev.csv")
    expected = (man.set_index("image_id")["dr_grade"] >= 1).astype(int)
    assert (dev.set_index("image_id")["dr"].astype(int) == expected.loc[dev.image_id]).all()
    ok = table[table.image_id == "dev00L"].iloc[0]
    assert ok["image"] == "results/preprocessed/dev/images/dev00L.png"


def test_missing_qc_row_and_out_of_range_class_are_named(tmp_path):
    man_path, qc_path = write_dataset(tmp_path, "dev")
    qc = pd.read_csv(qc_path)
    qc[qc.image_id != "dev05R"].to_csv(qc_path, index=False)
    task = {"name": "g", "type": "ordinal", "label": "dr_grade", "classes": ["0", "1", "2"], "datasets": ["dev"]}
    with pytest.raises(SystemExit, match="dev05R"):
        run(tmp_path, task, ["dev"])
    write_dataset(tmp_path, "dev")
    with pytest.raises(SystemExit, match=r"dev/dev03L has dr_grade=3.*outside classes 0..2"):
        run(tmp_path, task, ["dev"])

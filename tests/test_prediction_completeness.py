"""A prediction set is exactly its split: the evaluate verb and the paired comparison refuse
a file with missing, extra or repeated images, other classes or another truth, in one
line naming the file and the first missing id (issue 23)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fundusfm.evaluate.cli import evaluate_main
from fundusfm.task import PredictionsError

TASK = {"type": "binary", "label": "abnormal", "classes": ["normal", "abnormal"], "name": "t", "datasets": ["d"]}
N = 16


def _split_table(root: Path) -> Path:
    """A task table (docs/architecture.md) with 16 test, 12 val and 20 train rows in fold0."""
    rng = np.random.default_rng(0)
    roles = ["test"] * N + ["val"] * 12 + ["train"] * 20
    df = pd.DataFrame({"dataset": "d", "image_id": [f"img{i:02d}" for i in range(len(roles))],
                       "patient_id": [f"p{i // 2}" for i in range(len(roles))], "eye": "L",
                       "image": "", "qc_status": "ok", "abnormal": rng.integers(0, 2, len(roles)), "fold0": roles})
    path = root / "results" / "splits" / "t.csv"
    path.parent.mkdir(parents=True)
    df.to_csv(path, index=False)
    return path


def _predictions(table: Path, role: str, out: Path, seed: int) -> Path:
    df = pd.read_csv(table, dtype={"image_id": str})
    rows = df[df["fold0"] == role]
    p = np.clip(0.5 + 0.3 * (rows["abnormal"].to_numpy() - 0.5) + np.random.default_rng(seed).normal(0, 0.2, len(rows)),
                0.01, 0.99)
    pred = pd.DataFrame({"image_id": rows["image_id"], "dataset": "d", "patient_id": rows["patient_id"], "eye": "L",
                         "label": rows["abnormal"], "prob_normal": 1 - p, "prob_abnormal": p})
    out.parent.mkdir(parents=True, exist_ok=True)
    pred.to_csv(out, index=False)
    return out


def _run(root: Path, init: str, seed: int) -> Path:
    run = root / "results" / "finetune" / "t" / init / "finetune" / "fold0" / "frac1" / "seed0"
    table = root / "results" / "splits" / "t.csv"
    _predictions(table, "test", run / "predictions_test.csv", seed)
    _predictions(table, "val", run / "predictions_val.csv", seed + 100)
    return run


def _evaluate(root: Path, run: Path, init: str, split: bool = True) -> tuple[int, Path]:
    out = root / "results" / "metrics" / "t" / init / "finetune" / "fold0" / "frac1" / "seed0" / "test.json"
    meta = {"task": "t", "init": init, "adaptation": "finetune", "fold": 0, "fraction": 1.0, "seed": 0, "set": "test"}
    table = root / "results" / "splits" / "t.csv"
    tables = ["--split-table", str(table), "--task-table", str(table)] if split else []
    rc = evaluate_main(["--predictions", str(run / "predictions_test.csv"), "--val-predictions",
                        str(run / "predictions_val.csv"), "--task-json", json.dumps(TASK), "--meta", json.dumps(meta),
                        *tables, "--n-boot", "20", "--out", str(out)])
    return rc, out


@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _split_table(tmp_path)
    return tmp_path


def test_truncated_predictions_are_refused_naming_the_first_missing_id(study, caplog):
    run = _run(study, "random", seed=1)
    rc, out = _evaluate(study, run, "random")
    assert rc == 0 and json.loads(out.read_text())["n_images"] == N
    pred = pd.read_csv(run / "predictions_test.csv", dtype={"image_id": str})
    pred.iloc[:5].to_csv(run / "predictions_test.csv", index=False)  # the damage of the issue
    out.unlink()
    rc, out = _evaluate(study, run, "random")
    assert rc == 1 and not out.exists()
    assert "predictions_test.csv: 11 of the 16 images of" in caplog.text
    assert "first missing: d/img05" in caplog.text


@pytest.mark.parametrize("damage, message", [
    (lambda df: pd.concat([df, df.iloc[[3]]]), "image d/img03 appears twice"),
    (lambda df: pd.concat([df, df.assign(image_id="stranger").iloc[[0]]]), "1 image(s) not in"),
    (lambda df: df.assign(label=1 - df["label"]), "has label="),
    (lambda df: df.assign(prob_glaucoma=0.0), "probability columns"),
], ids=["duplicate row", "extra row", "other truth", "other classes"])
def test_a_set_that_is_not_its_split_is_refused(study, damage, message):
    from fundusfm.evaluate.io import check_complete, split_rows

    table = study / "results" / "splits" / "t.csv"
    pred = pd.read_csv(_predictions(table, "test", study / "p.csv", 0), dtype={"image_id": str})
    spec_rows = split_rows(table, 0, "test")
    with pytest.raises(PredictionsError, match="p.csv: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        check_complete(damage(pred), spec_rows, TASK, "p.csv", f"{table} fold0 test")


def test_validation_under_a_label_fraction_may_be_part_of_its_split(study):
    from fundusfm.evaluate.io import check_complete, split_rows

    table = study / "results" / "splits" / "t.csv"
    val = pd.read_csv(_predictions(table, "val", study / "v.csv", 0), dtype={"image_id": str})
    rows = split_rows(table, 0, "val")
    check_complete(val.iloc[:6], rows, TASK, "v.csv", "val", subset=True)
    with pytest.raises(PredictionsError, match="first missing"):
        check_complete(val.iloc[:6], rows, TASK, "v.csv", "val")
    with pytest.raises(PredictionsError, match="not in"):
        test = pd.read_csv(_predictions(table, "test", study / "t.csv", 0), dtype={"image_id": str})
        check_complete(test, rows, TASK, "t.csv", "val", subset=True)


@pytest.mark.slow
def test_paired_comparison_refuses_a_truncated_file_in_one_line(study):
    """The predictions truncated after their metrics were computed (here without a split
    record, as metrics JSONs written before it): the table's paired comparison says so in
    one line (no traceback), naming the file and the first missing id."""
    metrics = []
    for init, seed in (("random", 1), ("fundus", 2)):
        run = _run(study, init, seed)
        rc, out = _evaluate(study, run, init, split=False)
        assert rc == 0
        metrics.append(out)
    damaged = Path(json.loads(metrics[1].read_text())["predictions"])
    pd.read_csv(damaged, dtype={"image_id": str}).iloc[:5].to_csv(damaged, index=False)
    p = subprocess.run([sys.executable, "-m", "fundusfm.cli", "table", "--task", "t", "--task-json", json.dumps(TASK),
                        "--metrics", *map(str, metrics), "--compare-to", "random", "--n-boot", "20",
                        "--out-prefix", str(study / "results" / "tables" / "t")],
                       cwd=study, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    last = [line for line in p.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("fundusfm table: ") and "first missing: d/img05" in last, p.stderr[-2000:]


@pytest.mark.slow
def test_paired_comparison_checks_the_recorded_split_again(study):
    """With the split recorded by the evaluate step, the comparison names the damaged
    predictions file itself."""
    metrics = []
    for init, seed in (("random", 1), ("fundus", 2)):
        rc, out = _evaluate(study, _run(study, init, seed), init)
        assert rc == 0
        metrics.append(out)
    damaged = Path(json.loads(metrics[1].read_text())["predictions"])
    pd.read_csv(damaged, dtype={"image_id": str}).iloc[:5].to_csv(damaged, index=False)
    p = subprocess.run([sys.executable, "-m", "fundusfm.cli", "table", "--task", "t", "--task-json", json.dumps(TASK),
                        "--metrics", *map(str, metrics), "--compare-to", "random", "--n-boot", "20",
                        "--out-prefix", str(study / "results" / "tables" / "t")],
                       cwd=study, capture_output=True, text=True, timeout=300)
    last = [line for line in p.stderr.splitlines() if line.strip()][-1]
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert str(damaged) in last and "first missing: d/img05" in last, last

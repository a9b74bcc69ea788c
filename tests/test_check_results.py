"""``fundusfm check-results``: a results tree verified against what the study recorded,
for the files Snakemake does not look at once the outputs after them stand (issue 23)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_preprocess import fundus_on_frame  # noqa: E402
from test_prediction_completeness import TASK, _evaluate, _run, _split_table  # noqa: E402

from fundusfm.audit.cli import check_results_main  # noqa: E402
from fundusfm.preprocess.pipeline import PreprocessSpec, preprocess_many  # noqa: E402


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A small results tree: a dataset's QC table with processed images, a split table, a
    run with its metrics, a release."""
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "data"
    raw.mkdir()
    for i in range(3):
        fundus_on_frame(dx=10 * i).save(raw / f"im{i}.jpg", quality=90)
    preprocess_many([(f"im{i}", str(raw / f"im{i}.jpg")) for i in range(3)], Path("results/preprocessed/d"),
                    PreprocessSpec(size=64), progress=False)
    _split_table(tmp_path)
    run = _run(tmp_path, "random", seed=1)
    (run / "model.json").write_text("{}")
    assert _evaluate(tmp_path, run, "random")[0] == 0
    from test_release import make_release

    (tmp_path / "rel").mkdir()
    shutil.copytree(make_release(tmp_path / "rel", "timm"), tmp_path / "results" / "release")
    return tmp_path


def test_a_clean_tree_passes(tree, capsys):
    assert check_results_main([]) == 0
    assert "0 problem(s)" in capsys.readouterr().err


def test_each_changed_or_deleted_file_is_named_with_how_to_rebuild_it(tree, capsys):
    img = tree / "results" / "preprocessed" / "d" / "images" / "im1.jpg"
    img.write_text("replaced\n")
    (tree / "results" / "preprocessed" / "d" / "images" / "im2.jpg").unlink()
    run = tree / "results" / "finetune" / "t" / "random" / "finetune" / "fold0" / "frac1" / "seed0"
    shutil.rmtree(run)  # Snakemake: "Nothing to be done", the tables still stand
    cfg = json.loads((tree / "results" / "release" / "config.json").read_text())
    cfg["fundusfm"]["model"]["classes"] = cfg["fundusfm"]["model"]["classes"][::-1]
    (tree / "results" / "release" / "config.json").write_text(json.dumps(cfg))
    assert check_results_main([]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any("im1.jpg differs from its recorded processed_xxh3" in x and "snakemake --forcerun preprocess" in x
               for x in out), out
    assert any("im2.jpg is missing" in x for x in out), out
    assert any("test.json: its run folder" in x and "is gone" in x and "snakemake --cores N" in x for x in out), out
    assert any("config.json: changed after export" in x for x in out), out
    assert len(out) == 4, out


def test_truncated_predictions_are_found_through_their_metrics_record(tree, capsys):
    pred = tree / "results" / "finetune" / "t" / "random" / "finetune" / "fold0" / "frac1" / "seed0" / \
        "predictions_test.csv"
    pd.read_csv(pred, dtype=str).iloc[:5].to_csv(pred, index=False)
    assert check_results_main([]) == 1
    out = capsys.readouterr().out
    assert "predictions_test.csv: holds other images than" in out and TASK["name"] in out

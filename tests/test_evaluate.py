"""Paired comparisons, aggregation, study tables and figures (CLI end to end)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from fundusfm.evaluate.aggregate import aggregate_records, aggregate_values
from fundusfm.evaluate.cli import evaluate_main, figures_main, table_main
from fundusfm.evaluate.compare import delong_test, paired_auroc_test
from fundusfm.task import PredictionsError, TaskSpec

TASK = {"type": "binary", "label": "glaucoma", "classes": ["no", "yes"]}
SIGNAL = {"random": 0.4, "imagenet": 1.2, "fundus": 2.5}


def preds(n_pat: int, signal: float, seed: int, dataset: str = "dev", offset: int = 0, noise_seed: int | None = None):
    """Two images per patient (both eyes), patient-level label, score = signal * label + noise."""
    rng = np.random.default_rng(seed)
    y_pat = rng.integers(0, 2, n_pat)
    y = np.repeat(y_pat, 2)
    nrng = np.random.default_rng(seed if noise_seed is None else noise_seed)
    logit = signal * (y - 0.5) * 2 + nrng.normal(size=len(y))
    p = 1 / (1 + np.exp(-logit))
    pid = np.repeat([f"P{offset + i}" for i in range(n_pat)], 2)
    return pd.DataFrame({"image_id": [f"{pp}{e}" for pp, e in zip(pid, "LR" * n_pat)], "dataset": dataset,
                         "patient_id": pid, "eye": list("LR" * n_pat), "label": y,
                         "prob_no": 1 - p, "prob_yes": p})


def slow_delong_var(y, s):
    """DeLong's variance of one AUROC from its definition (pairwise kernel)."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    return np.var(v10, ddof=1) / len(pos) + np.var(v01, ddof=1) / len(neg), psi.mean()


def test_delong_matches_definition_and_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    a = np.round(y * 0.8 + rng.normal(size=50), 1)  # rounding makes ties
    b = np.round(y * 0.3 + rng.normal(size=50), 1)
    d = delong_test(y, a, b)
    assert d["auroc_a"] == pytest.approx(skm.roc_auc_score(y, a))
    assert d["auroc_b"] == pytest.approx(skm.roc_auc_score(y, b))
    var_a, _ = slow_delong_var(y, a)
    var_b, _ = slow_delong_var(y, b)
    # covariance by the definition too
    pos, neg = y == 1, y == 0
    pa = (a[pos][:, None] > a[neg]) + 0.5 * (a[pos][:, None] == a[neg])
    pb = (b[pos][:, None] > b[neg]) + 0.5 * (b[pos][:, None] == b[neg])
    cov = (np.cov(pa.mean(1), pb.mean(1))[0, 1] / pos.sum() + np.cov(pa.mean(0), pb.mean(0))[0, 1] / neg.sum())
    se = math.sqrt(var_a + var_b - 2 * cov)
    assert d["se"] == pytest.approx(se)
    assert d["p_value"] == pytest.approx(2 * (1 - __import__("scipy").stats.norm.cdf(abs(d["diff"] / se))))


def test_delong_identical_models_p_one_and_single_class_undefined():
    y = np.array([0, 1, 0, 1, 1])
    s = np.array([0.1, 0.9, 0.3, 0.6, 0.2])
    assert delong_test(y, s, s)["p_value"] == 1.0
    from fundusfm.evaluate.metrics import Undefined
    with pytest.raises(Undefined):
        delong_test(np.zeros(4, int), s[:4], s[:4])


def test_paired_test_detects_better_model_and_needs_same_images():
    strong = preds(60, 2.5, seed=1, noise_seed=10)
    weak = preds(60, 0.2, seed=1, noise_seed=11)
    r = paired_auroc_test(strong, weak, TASK, n_boot=300, seed=0)
    assert r["delong"]["diff"] > 0.2 and r["delong"]["p_value"] < 0.01
    assert r["bootstrap"]["p_value"] < 0.05 and r["bootstrap"]["ci"][0] > 0
    same = paired_auroc_test(strong, strong, TASK, n_boot=100)
    assert same["delong"]["p_value"] == 1.0 and same["bootstrap"]["p_value"] == 1.0
    with pytest.raises(PredictionsError, match="same images"):
        paired_auroc_test(strong, weak.iloc[:-1], TASK)


def test_aggregation_mean_sd_and_students_t_interval():
    agg = aggregate_values([0.75, 0.8, 0.85, None], "auroc")
    assert agg["n"] == 3 and agg["n_undefined"] == 1
    assert agg["mean"] == pytest.approx(0.8)
    assert agg["sd"] == pytest.approx(0.05)  # sample sd, ddof=1
    t975_2df = 4.302652729911275  # Student's t, 2 degrees of freedom (tables)
    assert agg["ci_lo"] == pytest.approx(0.8 - t975_2df * 0.05 / math.sqrt(3))
    assert agg["ci_hi"] == pytest.approx(0.8 + t975_2df * 0.05 / math.sqrt(3))
    one = aggregate_values([0.7])
    assert one["sd"] is None and one["ci_lo"] is None and one["mean"] == 0.7


def test_two_runs_give_a_range_and_no_interval():
    two = aggregate_values([0.3, 0.9], "sensitivity")
    assert two["ci_lo"] is None and two["ci_hi"] is None
    assert (two["range_lo"], two["range_hi"]) == (0.3, 0.9)


def test_interval_bounds_stay_inside_the_metric_range():
    # the sensitivity at n = 3 with a wide spread: t bounds cut to [0, 1]
    agg = aggregate_values([0.0, 0.3, 0.9], "sensitivity")
    assert 0.0 <= agg["ci_lo"] < agg["ci_hi"] <= 1.0 and agg["ci_lo"] == 0.0
    kappa = aggregate_values([-0.9, 0.0, 0.9], "kappa_quadratic")
    assert kappa["ci_lo"] == -1.0 and kappa["ci_hi"] == 1.0
    brier = aggregate_values([0.8, 1.1, 1.4], "brier")  # multiclass Brier: a sum over classes, up to 2
    assert brier["ci_hi"] > 1.0


def test_duplicate_runs_rejected():
    rec = {"task": "t", "set": "test", "init": "random", "fraction": 1.0, "fold": 0, "seed": 0,
           "metrics": {"auroc": 0.5}}
    with pytest.raises(ValueError, match="same run"):
        aggregate_records([dict(rec, _path="a.json"), dict(rec, _path="b.json")])
    # the same init's linear probe is another run, and another row
    long = aggregate_records([dict(rec, _path="a.json"), dict(rec, adaptation="linear", _path="b.json")])
    assert list(long["adaptation"]) == ["finetune", "linear"] and (long["n"] == 1).all()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny study: 3 inits x 2 fractions x 2 folds x 1 seed (fine-tunes), internal test +
    one external set, in the results layout (finetune/<task>/<init>/<adaptation>/fold<k>/...)."""
    from fundusfm import layout

    root = tmp_path_factory.mktemp("study")
    task_json = root / "task.json"
    task_json.write_text(json.dumps(TASK))
    metrics = []
    for init, sig in SIGNAL.items():
        for frac in (0.1, 1.0):
            for fold in (0, 1):
                run = layout.Run("glaucoma", init, fold, layout.fmt_fraction(frac), 0)
                out = root / layout.finetune_dir("results", run)
                out.mkdir(parents=True)
                s = sig * (0.6 if frac == 0.1 else 1.0)
                noise = hash((init, frac, fold)) % 1000
                preds(20, s, seed=fold, offset=100 * fold, noise_seed=noise).to_csv(out / "predictions_test.csv", index=False)
                preds(15, s, seed=50 + fold, noise_seed=noise + 1).to_csv(out / "predictions_val.csv", index=False)
                preds(25, s * 0.7, seed=99, dataset="ext", noise_seed=noise + 2).to_csv(
                    out / "predictions_external_ext.csv", index=False)
                pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.7, 0.5, 0.4], "val_loss": [0.7, 0.6, 0.55],
                              "val_auroc": [0.6, 0.7, 0.75], "lr": [1e-3] * 3, "time": [1.0] * 3}
                             ).to_csv(out / "history.csv", index=False)
                for set_name, fname in (("test", "predictions_test.csv"), ("external_ext", "predictions_external_ext.csv")):
                    meta = dict(task="glaucoma", init=init, adaptation="finetune", fold=fold, fraction=frac, seed=0,
                                set=set_name)
                    mpath = root / layout.metrics_json("results", run, set_name)
                    rc = evaluate_main(["--predictions", str(out / fname), "--val-predictions",
                                        str(out / "predictions_val.csv"), "--task-json", str(task_json),
                                        "--meta", json.dumps(meta), "--out", str(mpath), "--n-boot", "20"])
                    assert rc == 0
                    metrics.append(mpath)
    return root, task_json, metrics


def test_evaluate_writes_contract_json(study):
    root, _, metrics = study
    rec = json.loads(metrics[0].read_text())
    for k in ("task", "init", "adaptation", "fold", "fraction", "seed", "set", "n_images", "n_patients", "metrics",
              "ci", "undefined", "predictions"):
        assert k in rec
    assert rec["n_images"] == 2 * rec["n_patients"]
    assert rec["ci"]["auroc"][0] <= rec["metrics"]["auroc"] <= rec["ci"]["auroc"][1]
    assert rec["metrics"]["threshold_val"] is not None
    assert rec["bootstrap"]["unit"] == "patient" and rec["bootstrap"]["n_boot"] == 20
    df = pd.read_csv(rec["predictions"])
    assert rec["metrics"]["auroc"] == pytest.approx(skm.roc_auc_score(df["label"], df["prob_yes"]))


def test_evaluate_without_val_reports_threshold_metrics_as_undefined(study, tmp_path):
    root, task_json, metrics = study
    rec = json.loads(metrics[0].read_text())
    out = tmp_path / "m.json"
    meta = {k: rec[k] for k in ("task", "init", "adaptation", "fold", "fraction", "seed", "set")}
    evaluate_main(["--predictions", rec["predictions"], "--task-json", str(task_json), "--meta", json.dumps(meta),
                   "--out", str(out), "--n-boot", "10"])
    new = json.loads(out.read_text())
    assert new["metrics"]["sensitivity_val_threshold"] is None
    assert "val-predictions" in new["undefined"]["sensitivity_val_threshold"]


CELL = re.compile(r"(-?\d+\.\d+) \(range (-?\d+\.\d+)–(-?\d+\.\d+)\)")


def test_table_files_parse_back_to_metric_json_numbers(study, tmp_path):
    root, task_json, metrics = study
    prefix = tmp_path / "tables" / "glaucoma"
    assert table_main(["--task", "glaucoma", "--task-json", str(task_json), "--metrics", *map(str, metrics),
                       "--out-prefix", str(prefix), "--n-boot", "100"]) == 0
    recs = [json.loads(p.read_text()) for p in metrics]

    def expected(set_name, init, frac, metric="auroc"):
        v = [r["metrics"][metric] for r in recs if (r["set"], r["init"], r["fraction"]) == (set_name, init, frac)]
        return np.mean(v), min(v), max(v)

    csv = pd.read_csv(prefix.with_suffix(".csv"))
    assert len(csv) == 2 * 3 * 2  # sets x inits x fractions (one adaptation)
    assert set(csv["adaptation"]) == {"finetune"} and "auroc__diff_vs_finetune" not in csv.columns
    for _, r in csv.iterrows():
        e = expected(r["set"], r["init"], r["fraction"])
        assert [r["auroc__mean"], r["auroc__range_lo"], r["auroc__range_hi"]] == pytest.approx(e)
        assert r["auroc__n"] == 2 and np.isnan(r["auroc__ci_lo"])  # n = 2: a range, no interval
        # the headline interval (runs + patients) exists for internal and external sets alike
        assert 0 <= r["auroc__hl_lo"] <= r["auroc__hl_hi"] <= 1
    # comparison columns vs random exist and random vs itself is empty
    assert "auroc__p_vs_random" in csv.columns
    assert csv.loc[csv["init"] == "random", "auroc__p_vs_random"].isna().all()
    fundus_full = csv[(csv["init"] == "fundus") & (csv["fraction"] == 1.0) & (csv["set"] == "test")].iloc[0]
    assert fundus_full["auroc__diff_vs_random"] > 0

    md = prefix.with_suffix(".md").read_text()
    tex = prefix.with_suffix(".tex").read_text()
    section = None
    n_checked = 0
    for line in md.splitlines():
        if line.startswith("## "):
            section = "test" if "Internal" in line else "external_ext"
        if line.startswith("| ") and not line.startswith("| Init"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            init, adaptation, frac = cells[0], cells[1], float(cells[2].rstrip("%")) / 100
            assert adaptation == "fine-tune"
            got = [float(x) for x in CELL.match(cells[4]).groups()]
            assert got == pytest.approx(expected(section, init, frac), abs=6e-4)
            n_checked += 1
    assert n_checked == 12
    assert "Rows with n = 2: mean and the range of the two runs, no across-run interval" in md
    assert "run-to-run variation and patient sampling" in md
    tex_cells = re.findall(r"(-?\d+\.\d+) \(range (-?\d+\.\d+)--(-?\d+\.\d+)\)", tex)
    assert len(tex_cells) >= 12
    first_md = [float(x) for x in CELL.search(md).groups()]
    assert [float(x) for x in tex_cells[0]] == pytest.approx(first_md)
    assert r"\begin{tabular}" in tex and "External set: ext" in tex
    comp = pd.read_csv(prefix.with_name("glaucoma_comparisons.csv"))
    assert comp["delong_p"].notna().all() and set(comp["init"]) == {"imagenet", "fundus"}
    models = pd.read_csv(prefix.with_name("glaucoma_models.csv"))  # written even without model facts
    assert list(models["init"]) == ["random", "imagenet", "fundus"] and models["arch"].isna().all()
    assert "## Models" not in md  # nothing known about the models: no section


def test_table_single_run_uses_bootstrap_ci(study, tmp_path):
    root, task_json, metrics = study
    one = [p for p in metrics if "fold0" in str(p) and "random" in str(p)]
    prefix = tmp_path / "one"
    table_main(["--task", "glaucoma", "--task-json", str(task_json), "--metrics", *map(str, one),
                "--out-prefix", str(prefix), "--compare-to", "none"])
    md = prefix.with_suffix(".md").read_text()
    rec = json.loads(one[0].read_text())
    lo, hi = rec["ci"]["auroc"]
    assert f"{rec['metrics']['auroc']:.3f} [{lo:.3f}, {hi:.3f}]†" in md
    comp = pd.read_csv(prefix.with_name("one_comparisons.csv"))  # a declared output: header only, no reference
    assert comp.empty and {"init", "reference", "diff", "skipped"} <= set(comp.columns)


def test_figures_are_nonempty_pngs(study, tmp_path):
    root, task_json, metrics = study
    out = tmp_path / "fig"
    assert figures_main(["--task", "glaucoma", "--task-json", str(task_json), "--metrics", *map(str, metrics),
                         "--out-dir", str(out)]) == 0
    from fundusfm.evaluate.figures import figure_names
    for name in figure_names(["test", "external_ext"]):
        p = out / name
        assert p.is_file() and p.stat().st_size > 5000, name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("task", [
    {"type": "binary", "label": "y", "classes": ["neg", "pos"]},
    {"type": "ordinal", "label": "g", "classes": ["0", "1", "2", "3"]},
    {"type": "multilabel", "labels": ["a", "b", "c"]},
])
def test_fast_auroc_of_comparisons_equals_the_reported_metric(task):
    from fundusfm.evaluate.compare import metric_getter
    from fundusfm.evaluate.metrics import metrics_from_arrays

    spec = TaskSpec.from_dict(task, 't')
    rng = np.random.default_rng(0)
    n = 60
    if spec.type == "multilabel":
        y = (rng.random((n, 3)) < 0.4).astype(int)
        P = np.clip(y * 0.3 + rng.random((n, 3)) * 0.7, 0, 1)
    else:
        k = len(task["classes"])
        y = rng.integers(0, k, n)
        P = rng.dirichlet(np.ones(k), n) + np.eye(k)[y] * 0.3
        P /= P.sum(axis=1, keepdims=True)
    fast = metric_getter(spec, "auroc")
    assert fast(y, P) == pytest.approx(metrics_from_arrays(y, P, spec)["metrics"]["auroc"], abs=1e-12)
    # undefined (a class or label absent) is None, as in the reported metrics
    y_bad = np.zeros_like(y)
    assert fast(y_bad, P) is None


def test_resampled_auroc_equals_sklearn_on_each_resample():
    from sklearn.metrics import roc_auc_score

    from fundusfm.evaluate.metrics import resampled_auroc

    rng = np.random.default_rng(3)
    n = 80
    y = (rng.random(n) < 0.3).astype(int)
    s = np.round(rng.random(n) + 0.4 * y, 1)  # rounded: many tied scores, ties across classes
    W = rng.poisson(1.0, size=(50, n))
    W[0] = 0
    W[0, y == 1] = 1  # a resample with positives only: undefined
    got = resampled_auroc(y, s, W, chunk_elems=7 * n)  # several chunks
    assert np.isnan(got[0])
    for b in range(1, len(W)):
        idx = np.repeat(np.arange(n), W[b])
        assert got[b] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12), b
    with pytest.raises(ValueError, match="disagree"):
        resampled_auroc(y, s, W[:, :-1])


@pytest.mark.parametrize("kind", ["binary", "ordinal", "multilabel"])
def test_paired_bootstrap_all_resamples_at_once_equals_the_loop(kind):
    """The vectorised AUROC path draws the same patients and gives the same answer."""
    from fundusfm.evaluate.compare import metric_getter, paired_bootstrap_runs

    task = {"binary": {"type": "binary", "label": "y", "classes": ["neg", "pos"]},
            "ordinal": {"type": "ordinal", "label": "g", "classes": ["0", "1", "2"]},
            "multilabel": {"type": "multilabel", "labels": ["a", "b"]}}[kind]
    spec = TaskSpec.from_dict(task, "t")
    rng = np.random.default_rng(1)
    runs = []
    for r in range(3):
        n = 40
        groups = np.repeat(np.arange(n // 2), 2)  # two eyes per patient
        if kind == "multilabel":
            y = (rng.random((n, 2)) < 0.25).astype(int)
            pa, pb = np.clip(y * 0.4 + rng.random((n, 2)) * 0.6, 0, 1), rng.random((n, 2))
        else:
            k = 2 if kind == "binary" else 3
            y = rng.integers(0, k, n)
            pa = rng.dirichlet(np.ones(k), n) + np.eye(k)[y] * 0.4
            pb = rng.dirichlet(np.ones(k), n)
            pa, pb = pa / pa.sum(1, keepdims=True), pb / pb.sum(1, keepdims=True)
        runs.append((y, pa, pb, groups))
    fast = metric_getter(spec, "auroc")

    def slow(y, P):  # the same function without its all-at-once attribute
        return fast(y, P)

    a = paired_bootstrap_runs(runs, fast, n_boot=200, seed=5)
    b = paired_bootstrap_runs(runs, slow, n_boot=200, seed=5)
    assert a["n_valid"] == b["n_valid"] and a["diff"] == pytest.approx(b["diff"])
    assert a["ci"] == pytest.approx(b["ci"], abs=1e-12) and a["p_value"] == b["p_value"]

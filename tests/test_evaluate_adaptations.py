"""The adaptation dimension of the evaluation (issue 18): every init x adaptation is an
arm of the study table, paired comparisons never cross adaptations, the Models section
comes from the model-facts files, figures draw one line per arm, older metrics files
read as fine-tunes, and activation maps are drawn from fine-tunes only."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from fundusfm import layout
from fundusfm.evaluate.cli import evaluate_main, table_main
from fundusfm.evaluate.study import load_records
from fundusfm.task import TaskSpec

TASK = {"type": "binary", "label": "glaucoma", "classes": ["no", "yes"]}
# signal of each arm (init, adaptation): the linear probe of `big` beats the reference's
# linear probe by far more than the reference's fine-tune, so a pairing across
# adaptations would give a very different difference
SIGNAL = {("random", "finetune"): 1.6, ("random", "linear"): 0.1, ("big", "finetune"): 2.4, ("big", "linear"): 1.4}
FRACTIONS = (0.1, 1.0)
SEEDS = (0, 1)
SETS = {"test": "predictions_test.csv", "external_ext": "predictions_external_ext.csv"}


def preds(n_pat, signal, label_seed, noise_seed, dataset="dev"):
    """Two eyes per patient, the patient's label on both, score = signal * label + noise."""
    y = np.repeat(np.random.default_rng(label_seed).integers(0, 2, n_pat), 2)
    logit = signal * (y - 0.5) * 2 + np.random.default_rng(noise_seed).normal(size=len(y))
    p = 1 / (1 + np.exp(-logit))
    pid = np.repeat([f"P{i}" for i in range(n_pat)], 2)
    return pd.DataFrame({"image_id": [f"{q}{e}" for q, e in zip(pid, "LR" * n_pat)], "dataset": dataset,
                         "patient_id": pid, "eye": list("LR" * n_pat), "label": y, "prob_no": 1 - p, "prob_yes": p})


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """2 inits x 2 adaptations x 2 fractions x 2 seeds (fold 0), internal test + one external set,
    laid out as the workflow does (results/finetune/<task>/<init>/<adaptation>/fold0/...)."""
    root = tmp_path_factory.mktemp("grid")
    task_json = root / "task.json"
    task_json.write_text(json.dumps(TASK))
    metrics = []
    for k, ((init, adapt), sig) in enumerate(SIGNAL.items()):
        for frac in FRACTIONS:
            for seed in SEEDS:
                run = layout.Run("glaucoma", init, 0, layout.fmt_fraction(frac), seed, adapt)
                out = root / layout.finetune_dir("results", run)
                out.mkdir(parents=True)
                s = sig * (0.7 if frac == 0.1 else 1.0)
                noise = 1000 * k + 10 * seed + int(frac * 5)
                preds(30, s, 1, noise).to_csv(out / "predictions_test.csv", index=False)
                preds(20, s, 2, noise + 1).to_csv(out / "predictions_val.csv", index=False)
                preds(25, s * 0.8, 3, noise + 2, dataset="ext").to_csv(out / "predictions_external_ext.csv",
                                                                       index=False)
                for set_name, fname in SETS.items():
                    meta = dict(task="glaucoma", init=init, adaptation=adapt, fold=0, fraction=frac, seed=seed,
                                set=set_name)
                    mpath = root / layout.metrics_json("results", run, set_name)
                    assert evaluate_main(["--predictions", str(out / fname), "--val-predictions",
                                          str(out / "predictions_val.csv"), "--task-json", str(task_json),
                                          "--meta", json.dumps(meta), "--out", str(mpath), "--n-boot", "10"]) == 0
                    metrics.append(mpath)
    facts = root / "results" / "models" / "glaucoma"
    facts.mkdir(parents=True)
    (facts / "random.json").write_text(json.dumps({
        "init": "random", "arch": "resnet10t", "head": "timm", "img_size": 112, "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225], "params": 4_900_000, "params_backbone": 4_800_000, "feature_dim": 512,
        "throughput_img_s": 812.4, "device": "cpu", "torch_threads": 2}))
    # one key missing (feature_dim): the table says "—", not an error
    (facts / "big.json").write_text(json.dumps({
        "init": "big", "arch": "vit_tiny_patch16_224", "head": "timm", "img_size": 64, "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5], "params": 5_500_000, "params_backbone": 5_400_000, "throughput_img_s": 95.0,
        "device": "cuda:0 (NVIDIA H200)", "torch_threads": 2}))
    return root, task_json, metrics, sorted(facts.glob("*.json"))


def auroc(path):
    df = pd.read_csv(path)
    return skm.roc_auc_score(df["label"], df["prob_yes"])


def mean_diff(root, set_name, arm, ref, frac):
    """Mean over seeds of AUROC(arm) - AUROC(ref), each run paired with the same seed."""
    out = []
    for seed in SEEDS:
        a, b = (root / layout.finetune_dir("results", layout.Run("glaucoma", i, 0, layout.fmt_fraction(frac),
                                                                 seed, ad)) / SETS[set_name] for i, ad in (arm, ref))
        out.append(auroc(a) - auroc(b))
    return float(np.mean(out))


@pytest.fixture(scope="module")
def table(grid, tmp_path_factory):
    root, task_json, metrics, facts = grid
    prefix = tmp_path_factory.mktemp("tables") / "glaucoma"
    assert table_main(["--task", "glaucoma", "--task-json", str(task_json), "--metrics", *map(str, metrics),
                       "--out-prefix", str(prefix), "--n-boot", "50", "--predictions-root", str(root),
                       "--model-facts", *map(str, facts)]) == 0
    return prefix


def test_every_init_and_adaptation_is_a_row_of_each_set(table):
    csv = pd.read_csv(table.with_suffix(".csv"))
    for s in SETS:
        sub = csv[csv["set"] == s]
        assert len(sub) == 8  # 2 inits x 2 adaptations x 2 fractions
        assert set(zip(sub["init"], sub["adaptation"])) == set(SIGNAL)
        assert (sub["auroc__n"] == 2).all()  # 2 seeds per row, never pooled across adaptations
    # within an init: fine-tunes first, then linear probes, each by fraction
    test = csv[csv["set"] == "test"]
    assert list(zip(test["init"], test["adaptation"], test["fraction"])) == [
        ("random", "finetune", 0.1), ("random", "finetune", 1.0), ("random", "linear", 0.1),
        ("random", "linear", 1.0), ("big", "finetune", 0.1), ("big", "finetune", 1.0),
        ("big", "linear", 0.1), ("big", "linear", 1.0)]
    md = table.with_suffix(".md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| random") or line.startswith("| big")]
    assert sum("| linear probe |" in r for r in rows) == 8 and sum("| fine-tune |" in r for r in rows) == 8
    assert r"\begin{tabular}{lllrrrrr" in table.with_suffix(".tex").read_text()


def test_paired_difference_stays_within_the_adaptation(grid, table):
    root = grid[0]
    csv = pd.read_csv(table.with_suffix(".csv"))
    for r in csv[csv["init"] == "big"].to_dict("records"):
        arm = ("big", r["adaptation"])
        same = mean_diff(root, r["set"], arm, ("random", r["adaptation"]), r["fraction"])
        other = "linear" if r["adaptation"] == "finetune" else "finetune"
        crossed = mean_diff(root, r["set"], arm, ("random", other), r["fraction"])
        assert r["auroc__diff_vs_random"] == pytest.approx(same, abs=1e-9)
        assert abs(same - crossed) > 0.05  # the construction makes a crossed pairing visible
    assert csv.loc[csv["init"] == "random", "auroc__diff_vs_random"].isna().all()
    comp = pd.read_csv(table.with_name("glaucoma_comparisons.csv"))
    vs_ref = comp[comp["reference"] == "random"]
    assert len(vs_ref) == 2 * 2 * 2 * 2  # sets x adaptations x fractions x seeds of `big`
    assert (vs_ref["adaptation"] == vs_ref["reference_adaptation"]).all()
    assert (vs_ref["reference_init"] == "random").all() and vs_ref["skipped"].isna().all()


def test_linear_probe_is_also_compared_with_its_own_inits_fine_tune(grid, table):
    root = grid[0]
    csv = pd.read_csv(table.with_suffix(".csv"))
    for r in csv.to_dict("records"):
        if r["adaptation"] == "finetune":
            assert np.isnan(r["auroc__diff_vs_finetune"])
            continue
        want = mean_diff(root, r["set"], (r["init"], "linear"), (r["init"], "finetune"), r["fraction"])
        assert r["auroc__diff_vs_finetune"] == pytest.approx(want, abs=1e-9)
    comp = pd.read_csv(table.with_name("glaucoma_comparisons.csv"))
    vs_ft = comp[comp["reference"] == "finetune"]
    assert (vs_ft["init"] == vs_ft["reference_init"]).all() and (vs_ft["reference_adaptation"] == "finetune").all()
    md = table.with_suffix(".md").read_text()
    assert "ΔAUROC vs fine-tune (p)" in md and "ΔAUROC vs random (p)" in md
    assert "vs the reference init in the same adaptation" in md


def test_models_section_from_the_model_facts_files(table):
    models = pd.read_csv(table.with_name("glaucoma_models.csv"))
    assert list(models["init"]) == ["random", "big"]
    big = models.set_index("init").loc["big"]
    assert np.isnan(big["feature_dim"]) and big["img_size"] == 64 and big["normalisation"] == "inception"
    assert big["adaptations"] == "finetune linear"
    md = table.with_suffix(".md").read_text()
    section = md.split("## Models", 1)[1]
    row = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
           for line in section.splitlines() if line.startswith("| random") or line.startswith("| big")}
    assert row["random"][1:7] == ["resnet10t", "4.9 (backbone 4.8)", "112", "imagenet", "512", "812 on cpu (2 threads)"]
    assert row["big"][1:7] == ["vit_tiny_patch16_224", "5.5 (backbone 5.4)", "64", "inception", "—",
                               "95 on cuda:0 (NVIDIA H200)"]
    assert row["big"][7] == "—"  # no protocol facts given: the recipe is not known
    assert "Models" in table.with_suffix(".tex").read_text()


def test_models_recipe_column_from_the_protocol_facts(caplog):
    from fundusfm.evaluate.tables import model_table, models_display

    protocol = {"models": {"random": {"definition": {"arch": "resnet50", "img_size": 512, "head": "timm",
                                                     "mean": None, "std": None}, "recipe": {}},
                           "retfound": {"definition": {"arch": "vit_large_patch16_224", "img_size": 224,
                                                       "head": "timm", "mean": "imagenet", "std": "imagenet"},
                                        "recipe": {"lr": 0.0005, "layer_decay": 0.65}}}}
    shown = models_display(model_table(["random", "retfound"], {}, protocol)).set_index("Init")
    assert shown.loc["retfound", "Recipe vs task hparams"] == "layer_decay 0.65, lr 0.0005"
    assert shown.loc["random", "Recipe vs task hparams"] == "none (the task's hparams)"
    assert shown.loc["retfound", "Architecture"] == "vit_large_patch16_224"  # from the config when no facts file
    assert shown.loc["retfound", "Normalisation"] == "imagenet" and shown.loc["random", "Normalisation"] == "—"
    assert shown.loc["retfound", "Params (M)"] == "—"
    # facts measured on another model than the config defines are shown, and warned about
    with caplog.at_level(logging.WARNING):
        model_table(["random"], {"random": {"arch": "resnet10t", "img_size": 512}}, protocol)
    assert [m for m in caplog.messages if "model facts of random" in m] == [
        "model facts of random: arch is 'resnet10t' but the config's model definition says 'resnet50' (facts measured "
        "on another model? rerun fundusfm model-facts); the table shows the facts"]  # img_size agrees


def test_bad_model_facts_file_is_named(grid, tmp_path):
    root, task_json, metrics, facts = grid
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]")
    assert table_main(["--task", "glaucoma", "--task-json", str(task_json), "--metrics", str(metrics[0]),
                       "--out-prefix", str(tmp_path / "t"), "--model-facts", str(bad)]) == 1
    from fundusfm.evaluate.tables import read_model_facts

    with pytest.raises(ValueError, match="x.json: model facts must be a JSON object"):
        read_model_facts([bad])
    with pytest.raises(ValueError, match="two model-facts files for init 'random'"):
        read_model_facts([facts[1], facts[1]])


def test_label_efficiency_has_one_line_per_model(grid):
    import matplotlib.pyplot as plt

    from fundusfm.evaluate.figures import label_efficiency_figure

    root, _, metrics, _ = grid
    fig = label_efficiency_figure(load_records(metrics), TaskSpec.from_dict(TASK, "glaucoma"), "test")
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    plt.close(fig)
    assert sorted(lines) == ["big", "big (linear)", "random", "random (linear)"]
    for init in ("random", "big"):
        ft, lin = lines[init], lines[f"{init} (linear)"]
        assert ft.get_color() == lin.get_color() and ft.get_linestyle() == "-" and lin.get_linestyle() == "--"
        assert len(ft.get_xdata()) == 2  # one point per fraction
    assert lines["random"].get_color() != lines["big"].get_color()
    # the linear probe's line holds the linear probes' mean AUROC, not a pooled one
    want = np.mean([json.loads(p.read_text())["metrics"]["auroc"] for p in metrics
                    if "/random/linear/" in str(p) and "frac1/" in str(p) and p.name == "test.json"])
    assert lines["random (linear)"].get_ydata()[-1] == pytest.approx(want)


def test_roc_and_confusion_name_each_adaptation(grid, tmp_path):
    from fundusfm.evaluate.figures import make_figures

    root, _, metrics, _ = grid
    recs = load_records(metrics)
    paths = make_figures(recs, TaskSpec.from_dict(TASK, "glaucoma"), tmp_path, root=root, sets=["test"])
    assert all(p.is_file() and p.stat().st_size > 5000 for p in paths)


def test_metrics_json_without_adaptation_reads_as_a_fine_tune(grid, tmp_path):
    from fundusfm.evaluate.aggregate import aggregate_records

    root, task_json, metrics, _ = grid
    old = []
    for p in metrics:
        if "/random/finetune/" in str(p) and p.name == "test.json":
            rec = json.loads(p.read_text())
            del rec["adaptation"]  # as written before issue 18
            q = tmp_path / f"{len(old)}.json"
            q.write_text(json.dumps(rec))
            old.append(q)
    recs = load_records(old)
    assert {r["adaptation"] for r in recs} == {"finetune"}
    long = aggregate_records(recs, metrics=["auroc"])
    assert set(long["adaptation"]) == {"finetune"} and len(long) == 2
    # the same run once with and once without the key is a duplicate
    new = [p for p in metrics if "/random/finetune/" in str(p) and p.name == "test.json"]
    with pytest.raises(ValueError, match="same run"):
        aggregate_records(load_records([old[0], new[0]]))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(new[0].read_text()), "adaptation": "probe"}))
    with pytest.raises(ValueError, match="bad.json: key 'adaptation' is 'probe'"):
        load_records([bad])


def test_evaluate_meta_adaptation_is_optional_and_checked(grid, tmp_path):
    root, task_json, metrics, _ = grid
    rec = json.loads(metrics[0].read_text())
    meta = {k: rec[k] for k in ("task", "init", "fold", "fraction", "seed", "set")}
    out = tmp_path / "m.json"
    assert evaluate_main(["--predictions", rec["predictions"], "--task-json", str(task_json), "--meta",
                          json.dumps(meta), "--out", str(out), "--n-boot", "5"]) == 0
    assert json.loads(out.read_text())["adaptation"] == "finetune"
    assert evaluate_main(["--predictions", rec["predictions"], "--task-json", str(task_json), "--meta",
                          json.dumps({**meta, "adaptation": "linear"}), "--out", str(out), "--n-boot", "5"]) == 0
    assert json.loads(out.read_text())["adaptation"] == "linear"
    assert evaluate_main(["--predictions", rec["predictions"], "--task-json", str(task_json), "--meta",
                          json.dumps({**meta, "adaptation": "frozen"}), "--out", str(out)]) == 1


def test_gallery_model_is_never_a_linear_probe(grid, caplog):
    from fundusfm.evaluate.study import best_run_on_validation

    root, _, metrics, _ = grid
    spec = TaskSpec.from_dict(TASK, "glaucoma")
    recs = load_records(metrics)
    with caplog.at_level(logging.INFO):
        best, _ = best_run_on_validation(recs, spec)
    assert best["adaptation"] == "finetune"
    assert any("linear-probe run(s) left out" in m for m in caplog.messages)
    with pytest.raises(ValueError, match="no fine-tune among the 8 run"):
        best_run_on_validation([r for r in recs if r["adaptation"] == "linear"], spec)

"""Study figures of one task (PNG, fixed names so Snakemake can declare them).

Files written by :func:`make_figures` into ``out_dir`` (``<set>`` = ``test``,
``external_<dataset>``, ...; one file per set found in the metrics JSONs):

* ``roc_<set>.png`` — ROC curves, one panel per label fraction, models overlaid (mean
  curve over runs, faint per-run curves; legend: mean AUROC ± sd);
* ``pr_<set>.png`` — precision-recall curves, same layout;
* ``label_efficiency_<set>.png`` — headline metric vs label fraction, one line per model
  (mean; band: Student's t interval over >= 3 runs, the range of 2 runs, a single run's CI);
* ``confusion_<set>.png`` — confusion matrices (row-normalised, summed over runs) per
  model at the largest fraction (multilabel: one 2x2 per label);
* ``calibration_<set>.png`` — reliability diagrams per model at the largest fraction;
* ``training_curves.png`` — train / validation loss per epoch from ``history.csv``
  next to each run's predictions, mean over runs per model and fraction.

A *model* is an init in one adaptation (an arm of the study): the same colour for one
init, a solid line for its fine-tunes and a dashed one for its linear probes, labelled
``<init>`` and ``<init> (linear)`` (:func:`fundusfm.evaluate.io.arm_label`); the two
adaptations of one init are never pooled.

Binary tasks use the positive class; multiclass and multilabel ROC/PR/calibration use
the micro-average (all one-vs-rest decisions pooled).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn import metrics as skm  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402

from fundusfm.evaluate.aggregate import adaptation_rank, aggregate_records, init_rank, set_rank  # noqa: E402
from fundusfm.evaluate.io import adaptation_of, arm_label, to_arrays  # noqa: E402
from fundusfm.task import TaskSpec
from fundusfm.evaluate.study import load_predictions, predictions_path  # noqa: E402
from fundusfm.evaluate.tables import format_fraction, metric_label, set_title  # noqa: E402

log = logging.getLogger(__name__)
GRID = np.linspace(0, 1, 101)
DPI = 120
# line style per adaptation (colour per init)
LINESTYLES = {"finetune": "-", "linear": "--"}


def figure_names(sets: Sequence[str]) -> list[str]:
    """The file names :func:`make_figures` writes for these sets."""
    names = []
    for s in sets:
        names += [f"{k}_{s}.png" for k in ("roc", "pr", "label_efficiency", "confusion", "calibration")]
    return names + ["training_curves.png"]


def binary_view(y: np.ndarray, P: np.ndarray, spec: TaskSpec) -> tuple[np.ndarray, np.ndarray]:
    """(truth, score) of the decision a curve shows: positive class, or micro-average."""
    if spec.type == "binary":
        return np.asarray(y), P[:, 1]
    if spec.type == "multilabel":
        return np.asarray(y).ravel(), P.ravel()
    return np.eye(P.shape[1], dtype=int)[y].ravel(), P.ravel()


def _colors(inits: Sequence[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {init: cmap(i % 10) for i, init in enumerate(inits)}


def arm_of(rec: dict) -> tuple[str, str]:
    """A record's model: ``(init, adaptation)``."""
    return rec["init"], adaptation_of(rec)


def _arm_rank(arm: tuple[str, str]) -> tuple:
    # display order: init, then fine-tune before linear probe
    return init_rank(arm[0]), adaptation_rank(arm[1])


def _arms(records) -> list[tuple[str, str]]:
    """The models among ``records`` in display order."""
    return sorted({arm_of(r) for r in records}, key=_arm_rank)


def _style(arms: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """Line style of each model: colour of its init, solid (fine-tune) or dashed (linear probe)."""
    colors = _colors(list(dict.fromkeys(i for i, _ in arms)))
    return {(i, a): {"color": colors[i], "ls": LINESTYLES.get(a, ":")} for i, a in arms}


def _runs(records, spec, root):
    """Records with their predictions loaded (runs whose predictions are missing are logged)."""
    out = []
    for r in records:
        df = load_predictions(r, spec, root)
        if df is None:
            log.warning("figures: predictions of %s not found (%s); run left out of curves",
                        r.get("_path"), predictions_path(r, root))
            continue
        out.append((r, df))
    return out


def _panel_grid(n: int, size: float = 4.0):
    cols = min(n, 4)
    rows = int(np.ceil(n / cols)) if n else 1
    fig, axes = plt.subplots(rows, max(cols, 1), figsize=(size * max(cols, 1), size * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _placeholder(path: Path, text: str) -> Path:
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return _save(fig, path)


def plot_curves(runs, spec: TaskSpec, kind: str, path: Path, title: str) -> Path:
    """ROC (``kind='roc'``) or PR (``'pr'``) curves per fraction panel, models overlaid."""
    fracs = sorted({float(r["fraction"]) for r, _ in runs})
    arms = _arms([r for r, _ in runs])
    style = _style(arms)
    fig, axes = _panel_grid(len(fracs))
    for ax, frac in zip(axes, fracs):
        for arm in arms:
            curves, scores = [], []
            for r, df in runs:
                if arm_of(r) != arm or float(r["fraction"]) != frac:
                    continue
                y, s = binary_view(*to_arrays(df, spec), spec)
                if len(np.unique(y)) < 2:
                    continue
                if kind == "roc":
                    fpr, tpr, _ = skm.roc_curve(y, s)
                    ax.plot(fpr, tpr, **style[arm], alpha=0.15, lw=0.8)
                    curves.append(np.interp(GRID, fpr, tpr))
                    scores.append(skm.roc_auc_score(y, s))
                else:
                    prec, rec, _ = skm.precision_recall_curve(y, s)
                    ax.plot(rec, prec, **style[arm], alpha=0.15, lw=0.8)
                    # precision as a function of recall: take the best precision at >= recall
                    curves.append(np.interp(GRID, rec[::-1], np.maximum.accumulate(prec[::-1])))
                    scores.append(skm.average_precision_score(y, s))
            if not curves:
                continue
            sd = f" ± {np.std(scores, ddof=1):.3f}" if len(scores) > 1 else ""
            name = "AUROC" if kind == "roc" else "AP"
            ax.plot(GRID, np.mean(curves, axis=0), **style[arm], lw=2,
                    label=f"{arm_label(*arm)}: {name} {np.mean(scores):.3f}{sd} (n={len(scores)})")
        if kind == "roc":
            ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
            ax.set(xlabel="1 - specificity", ylabel="sensitivity")
        else:
            ax.set(xlabel="recall (sensitivity)", ylabel="precision")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), title=f"{format_fraction(frac)} of labels")
        ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=7)
    suffix = "" if spec.type == "binary" else " (micro-average)"
    fig.suptitle(f"{title}{suffix}")
    return _save(fig, path)


def label_efficiency_figure(records, spec: TaskSpec, set_name: str, metric: str = "auroc"):
    """Metric vs label fraction, one line per model (init x adaptation; band: Student's t
    95% interval over n >= 3 runs, the runs' range at n = 2, the run's bootstrap CI at
    n = 1). Returns the matplotlib figure (open: the caller saves and closes it)."""
    long = aggregate_records([r for r in records if r["set"] == set_name], metrics=[metric])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    arms = sorted(set(zip(long["init"], long["adaptation"])), key=_arm_rank)
    style = _style(arms)
    for init, adapt in arms:
        sub = long[(long["init"] == init) & (long["adaptation"] == adapt) & long["mean"].notna()]
        sub = sub.sort_values("fraction")
        if sub.empty:
            continue
        x = sub["fraction"].to_numpy() * 100
        m = sub["mean"].to_numpy(dtype=float)
        ax.plot(x, m, marker="o", **style[(init, adapt)], label=arm_label(init, adapt))
        lo = sub["ci_lo"].fillna(sub["range_lo"].where(sub["n"] == 2)).fillna(sub["boot_lo"]).to_numpy(dtype=float)
        hi = sub["ci_hi"].fillna(sub["range_hi"].where(sub["n"] == 2)).fillna(sub["boot_hi"]).to_numpy(dtype=float)
        ok = np.isfinite(lo) & np.isfinite(hi)
        ax.fill_between(x[ok], lo[ok], hi[ok], color=style[(init, adapt)]["color"],
                        alpha=0.2 if adapt == "finetune" else 0.1, lw=0)
    ax.set_xscale("log")
    fr = sorted(set(long["fraction"]))
    ax.set_xticks([f * 100 for f in fr], [format_fraction(f) for f in fr])
    ax.minorticks_off()
    ax.set(xlabel="labelled training data", ylabel=metric_label(metric),
           title=f"{spec.name}: {set_title(set_name)}")
    ax.legend(fontsize=8)
    return fig


def plot_label_efficiency(records, spec: TaskSpec, set_name: str, path: Path, metric: str = "auroc") -> Path:
    """:func:`label_efficiency_figure`, saved to ``path``."""
    return _save(label_efficiency_figure(records, spec, set_name, metric), path)


def plot_confusion(runs, spec: TaskSpec, path: Path, title: str) -> Path:
    """Row-normalised confusion matrices, summed over runs, per model at the largest fraction."""
    top = max(float(r["fraction"]) for r, _ in runs)
    panels = []  # (title, matrix, tick names)
    for arm in _arms([r for r, _ in runs]):
        init = arm_label(*arm)
        dfs = [df for r, df in runs if arm_of(r) == arm and float(r["fraction"]) == top]
        if not dfs:
            continue
        if spec.type == "multilabel":
            for j, name in enumerate(spec.names):
                cm = sum(skm.confusion_matrix(to_arrays(d, spec)[0][:, j], (to_arrays(d, spec)[1][:, j] >= 0.5)
                                              .astype(int), labels=[0, 1]) for d in dfs)
                panels.append((f"{init}: {name}", cm, ["0", "1"]))
        else:
            k = len(spec.names)
            cm = 0
            for d in dfs:
                y, P = to_arrays(d, spec)
                yhat = (P[:, 1] >= 0.5).astype(int) if spec.type == "binary" else P.argmax(1)
                cm = cm + skm.confusion_matrix(y, yhat, labels=list(range(k)))
            panels.append((init, cm, list(spec.names)))
    fig, axes = _panel_grid(len(panels), size=3.6)
    for ax, (t, cm, ticks) in zip(axes, panels):
        cm = np.asarray(cm, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = cm / cm.sum(axis=1, keepdims=True)
        skm.ConfusionMatrixDisplay(np.nan_to_num(norm), display_labels=ticks).plot(
            ax=ax, colorbar=False, cmap="Blues", values_format=".2f")
        ax.set_title(f"{t} (n={int(cm.sum())})", fontsize=9)
    fig.suptitle(f"{title}, {format_fraction(top)} of labels (rows: truth, normalised)")
    return _save(fig, path)


def plot_calibration(runs, spec: TaskSpec, path: Path, title: str, n_bins: int = 10) -> Path:
    """Reliability diagram per model at the largest fraction (runs pooled)."""
    top = max(float(r["fraction"]) for r, _ in runs)
    arms = _arms([r for r, _ in runs])
    style = _style(arms)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8, label="perfect")
    for arm in arms:
        ys, ss = [], []
        for r, df in runs:
            if arm_of(r) == arm and float(r["fraction"]) == top:
                y, P = to_arrays(df, spec)
                if spec.type in ("multiclass", "ordinal"):
                    # top-label calibration: confidence vs arg-max correct
                    yy, s = (P.argmax(1) == y).astype(int), P.max(1)
                else:
                    yy, s = binary_view(y, P, spec)
                ys.append(yy)
                ss.append(s)
        if not ys:
            continue
        y, s = np.concatenate(ys), np.concatenate(ss)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frac_pos, mean_pred = calibration_curve(y, s, n_bins=n_bins, strategy="uniform")
        ax.plot(mean_pred, frac_pos, marker="o", **style[arm], label=arm_label(*arm))
    what = "confidence (top label)" if spec.type in ("multiclass", "ordinal") else "predicted probability"
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=what, ylabel="observed frequency",
           title=f"{title}, {format_fraction(top)} of labels")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_training_curves(records, path: Path, root=None) -> Path:
    """Train / validation loss per epoch from ``history.csv`` next to each run's predictions
    (per model: a linear probe's history, if it writes one, is drawn apart, dashed)."""
    hist = {}
    for r in records:
        p = predictions_path(r, root)
        if p is None:
            continue
        h = p.parent / "history.csv"
        key = (arm_of(r), float(r["fraction"]), r["fold"], r["seed"])
        if h.is_file() and key not in hist:
            hist[key] = pd.read_csv(h)
    if not hist:
        return _placeholder(path, "no history.csv found next to the predictions")
    fracs = sorted({k[1] for k in hist})
    arms = sorted({k[0] for k in hist}, key=_arm_rank)
    colors = _style(arms)
    fig, axes = _panel_grid(len(fracs))
    for ax, frac in zip(axes, fracs):
        for arm in arms:
            hs = [h for k, h in hist.items() if k[0] == arm and k[1] == frac]
            if not hs:
                continue
            for col, ls in (("train_loss", "-"), ("val_loss", "--")):
                frames = [h[["epoch", col]] for h in hs if "epoch" in h.columns and col in h.columns]
                if not frames:
                    continue
                mean = pd.concat(frames).groupby("epoch")[col].mean()
                ax.plot(mean.index, mean.to_numpy(), ls=ls, color=colors[arm]["color"],
                        lw=1.5 if arm[1] == "finetune" else 0.9, label=f"{arm_label(*arm)} {col.replace('_', ' ')}")
        ax.set(xlabel="epoch", ylabel="loss", title=f"{format_fraction(frac)} of labels")
        ax.legend(fontsize=7)
    fig.suptitle("training curves (mean over folds and seeds)")
    return _save(fig, path)


def make_figures(records: Sequence[dict], spec: TaskSpec, out_dir: str | Path, root=None,
                 sets: Sequence[str] | None = None, metric: str = "auroc") -> list[Path]:
    """Write every figure of :func:`figure_names` for the sets in ``records`` (or ``sets``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets = list(sets) if sets else sorted({r["set"] for r in records}, key=set_rank)
    runs_all = _runs(records, spec, root)
    paths = []
    for s in sets:
        recs = [r for r in records if r["set"] == s]
        runs = [(r, df) for r, df in runs_all if r["set"] == s]
        title = f"{spec.name}: {set_title(s)}"
        if not recs:
            log.warning("figures: no runs for set %r", s)
        paths.append(plot_label_efficiency(recs, spec, s, out / f"label_efficiency_{s}.png", metric)
                     if recs else _placeholder(out / f"label_efficiency_{s}.png", f"no runs for {s}"))
        if runs:
            paths.append(plot_curves(runs, spec, "roc", out / f"roc_{s}.png", title))
            paths.append(plot_curves(runs, spec, "pr", out / f"pr_{s}.png", title))
            paths.append(plot_confusion(runs, spec, out / f"confusion_{s}.png", title))
            paths.append(plot_calibration(runs, spec, out / f"calibration_{s}.png", title))
        else:
            for k in ("roc", "pr", "confusion", "calibration"):
                paths.append(_placeholder(out / f"{k}_{s}.png", f"no predictions found for {s}"))
    paths.append(plot_training_curves(records, out / "training_curves.png", root))
    return paths

"""Study figures of one task (PNG, fixed names so Snakemake can declare them).

Files written by :func:`make_figures` into ``out_dir`` (``<set>`` = ``test``,
``external_<dataset>``, ...; one file per set found in the metrics JSONs):

* ``roc_<set>.png`` — ROC curves, one panel per label fraction, inits overlaid (mean
  curve over runs, faint per-run curves; legend: mean AUROC ± sd);
* ``pr_<set>.png`` — precision-recall curves, same layout;
* ``label_efficiency_<set>.png`` — headline metric vs label fraction per init
  (mean; band: Student's t interval over >= 3 runs, the range of 2 runs, a single run's CI);
* ``confusion_<set>.png`` — confusion matrices (row-normalised, summed over runs) per
  init at the largest fraction (multilabel: one 2x2 per label);
* ``calibration_<set>.png`` — reliability diagrams per init at the largest fraction;
* ``training_curves.png`` — train / validation loss per epoch from ``history.csv``
  next to each run's predictions, mean over runs per init and fraction.

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

from fundusfm.evaluate.aggregate import aggregate_records, init_rank, set_rank  # noqa: E402
from fundusfm.evaluate.io import to_arrays  # noqa: E402
from fundusfm.task import TaskSpec
from fundusfm.evaluate.study import load_predictions, predictions_path  # noqa: E402
from fundusfm.evaluate.tables import format_fraction, metric_label, set_title  # noqa: E402

log = logging.getLogger(__name__)
GRID = np.linspace(0, 1, 101)
DPI = 120


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
    """ROC (``kind='roc'``) or PR (``'pr'``) curves per fraction panel, inits overlaid."""
    fracs = sorted({float(r["fraction"]) for r, _ in runs})
    inits = sorted({r["init"] for r, _ in runs}, key=init_rank)
    colors = _colors(inits)
    fig, axes = _panel_grid(len(fracs))
    for ax, frac in zip(axes, fracs):
        for init in inits:
            curves, scores = [], []
            for r, df in runs:
                if r["init"] != init or float(r["fraction"]) != frac:
                    continue
                y, s = binary_view(*to_arrays(df, spec), spec)
                if len(np.unique(y)) < 2:
                    continue
                if kind == "roc":
                    fpr, tpr, _ = skm.roc_curve(y, s)
                    ax.plot(fpr, tpr, color=colors[init], alpha=0.15, lw=0.8)
                    curves.append(np.interp(GRID, fpr, tpr))
                    scores.append(skm.roc_auc_score(y, s))
                else:
                    prec, rec, _ = skm.precision_recall_curve(y, s)
                    ax.plot(rec, prec, color=colors[init], alpha=0.15, lw=0.8)
                    # precision as a function of recall: take the best precision at >= recall
                    curves.append(np.interp(GRID, rec[::-1], np.maximum.accumulate(prec[::-1])))
                    scores.append(skm.average_precision_score(y, s))
            if not curves:
                continue
            sd = f" ± {np.std(scores, ddof=1):.3f}" if len(scores) > 1 else ""
            name = "AUROC" if kind == "roc" else "AP"
            ax.plot(GRID, np.mean(curves, axis=0), color=colors[init], lw=2,
                    label=f"{init}: {name} {np.mean(scores):.3f}{sd} (n={len(scores)})")
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


def plot_label_efficiency(records, spec: TaskSpec, set_name: str, path: Path, metric: str = "auroc") -> Path:
    """Metric vs label fraction per init (band: Student's t 95% interval over n >= 3 runs,
    the runs' range at n = 2, the run's bootstrap CI at n = 1)."""
    long = aggregate_records([r for r in records if r["set"] == set_name], metrics=[metric])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    inits = sorted(set(long["init"]), key=init_rank)
    colors = _colors(inits)
    for init in inits:
        sub = long[(long["init"] == init) & long["mean"].notna()].sort_values("fraction")
        if sub.empty:
            continue
        x = sub["fraction"].to_numpy() * 100
        m = sub["mean"].to_numpy(dtype=float)
        ax.plot(x, m, marker="o", color=colors[init], label=init)
        lo = sub["ci_lo"].fillna(sub["range_lo"].where(sub["n"] == 2)).fillna(sub["boot_lo"]).to_numpy(dtype=float)
        hi = sub["ci_hi"].fillna(sub["range_hi"].where(sub["n"] == 2)).fillna(sub["boot_hi"]).to_numpy(dtype=float)
        ok = np.isfinite(lo) & np.isfinite(hi)
        ax.fill_between(x[ok], lo[ok], hi[ok], color=colors[init], alpha=0.2, lw=0)
    ax.set_xscale("log")
    fr = sorted(set(long["fraction"]))
    ax.set_xticks([f * 100 for f in fr], [format_fraction(f) for f in fr])
    ax.minorticks_off()
    ax.set(xlabel="labelled training data", ylabel=metric_label(metric),
           title=f"{spec.name}: {set_title(set_name)}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_confusion(runs, spec: TaskSpec, path: Path, title: str) -> Path:
    """Row-normalised confusion matrices, summed over runs, per init at the largest fraction."""
    top = max(float(r["fraction"]) for r, _ in runs)
    inits = sorted({r["init"] for r, _ in runs}, key=init_rank)
    panels = []  # (title, matrix, tick names)
    for init in inits:
        dfs = [df for r, df in runs if r["init"] == init and float(r["fraction"]) == top]
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
    """Reliability diagram per init at the largest fraction (runs pooled)."""
    top = max(float(r["fraction"]) for r, _ in runs)
    inits = sorted({r["init"] for r, _ in runs}, key=init_rank)
    colors = _colors(inits)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect")
    for init in inits:
        ys, ss = [], []
        for r, df in runs:
            if r["init"] == init and float(r["fraction"]) == top:
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
        ax.plot(mean_pred, frac_pos, marker="o", color=colors[init], label=init)
    what = "confidence (top label)" if spec.type in ("multiclass", "ordinal") else "predicted probability"
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=what, ylabel="observed frequency",
           title=f"{title}, {format_fraction(top)} of labels")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_training_curves(records, path: Path, root=None) -> Path:
    """Train / validation loss per epoch from ``history.csv`` next to each run's predictions."""
    hist = {}
    for r in records:
        p = predictions_path(r, root)
        if p is None:
            continue
        h = p.parent / "history.csv"
        key = (r["init"], float(r["fraction"]), r["fold"], r["seed"])
        if h.is_file() and key not in hist:
            hist[key] = pd.read_csv(h)
    if not hist:
        return _placeholder(path, "no history.csv found next to the predictions")
    fracs = sorted({k[1] for k in hist})
    inits = sorted({k[0] for k in hist}, key=init_rank)
    colors = _colors(inits)
    fig, axes = _panel_grid(len(fracs))
    for ax, frac in zip(axes, fracs):
        for init in inits:
            hs = [h for k, h in hist.items() if k[0] == init and k[1] == frac]
            if not hs:
                continue
            for col, ls in (("train_loss", "-"), ("val_loss", "--")):
                frames = [h[["epoch", col]] for h in hs if col in h.columns]
                if not frames:
                    continue
                mean = pd.concat(frames).groupby("epoch")[col].mean()
                ax.plot(mean.index, mean.to_numpy(), ls=ls, color=colors[init],
                        label=f"{init} {col.replace('_', ' ')}")
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

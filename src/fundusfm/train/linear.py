"""The linear probe: logistic regression on frozen features, the field's standard protocol.

One run = one task / init / fold / fraction / seed, as a fine-tune, and on the same rows:
train / val / test come from :func:`fundusfm.train.sets.select_sets` with the run's
fold, fraction, seed and hparams, so a probe and a fine-tune of the same run key see
exactly the same images (the paired comparison of the two adaptations rests on it).
Features come from the init's cached feature file (``fundusfm embed``), joined on
``image``; nothing here imports torch.

Protocol (docs/linear-probe.md):

* features standardised with the training rows' mean and standard deviation
  (scikit-learn ``StandardScaler``; a constant feature keeps scale 1);
* one L2-regularised logistic regression (``lbfgs``) per ``C`` of the sweep, smallest
  ``C`` first, each warm-started from the previous solution: multinomial for
  multiclass and ordinal tasks, one logistic regression per label for multilabel tasks,
  each fitted on the rows where that label is known (unknown labels are NaN:
  :func:`~fundusfm.train.sets.encode_targets`), as training masks them out of its loss;
* ``C`` chosen on the validation rows by the task's monitor metric
  (:func:`~fundusfm.train.metrics.monitor_value`, with the fine-tune's fallback to the
  validation loss when the metric is undefined there, :func:`~fundusfm.train.metrics.effective_monitor`);
  ties go to the smaller ``C`` (the stronger regularisation); without validation rows
  the training loss decides;
* validation and test predictions from the model fitted on the training rows with the
  chosen ``C`` (no refit on train + val), computed from the saved ``probe.json`` by
  :func:`predict_probe`, the function ``fundusfm infer`` uses for external sets.

Classes the training rows lack (a small label fraction): the regression is fitted on the
classes present, and each absent class gets the fixed probability
:data:`ABSENT_CLASS_PROB` (the present classes share the rest), so it is never
predicted and the probabilities still sum to 1. With a single class present (or a
multilabel label known with one value only) the model is a constant: the training
frequency clipped to ``[ABSENT_CLASS_PROB, 1 - ABSENT_CLASS_PROB]`` (0.5 for a label never
known). ``probe.json`` and ``model.json`` name every such class or label.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit, softmax

from fundusfm.task import TaskSpec, predictions_frame
from fundusfm.train.features import features_for, read_features
from fundusfm.train.metrics import effective_monitor, is_better, monitor_value
from fundusfm.train.sets import encode_targets, read_task_table, select_sets

log = logging.getLogger("fundusfm.linear")

PROBE_FILE = "probe.json"
PROBE_FORMAT = "fundusfm-linear-probe"
ABSENT_CLASS_PROB = 1e-6
ABSENT_CLASS_RULE = (f"a class absent from the training rows gets probability {ABSENT_CLASS_PROB:g} "
                     "(the present classes share the rest); a single present class or a label known with one "
                     f"value only: its training frequency clipped to [{ABSENT_CLASS_PROB:g}, "
                     f"{1 - ABSENT_CLASS_PROB}] (0.5 when never known)")
DEFAULT_C_VALUES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
EVAL_SETS = ("val", "test")


class ProbeError(ValueError):
    """A probe cannot run or be applied as asked (names the file and the key)."""


@dataclass
class ProbeSpec:
    """Everything one linear-probe run needs (the resolved CLI arguments)."""

    table: str
    fold: int
    fraction: float
    seed: int
    task: TaskSpec
    hparams: dict
    features: str
    out: str
    c_values: list[float] = field(default_factory=lambda: list(DEFAULT_C_VALUES))
    max_iter: int = 1000
    init_name: str | None = None


# ----------------------------------------------------------------------------- the model


def _constant(p: float) -> float:
    return float(np.clip(p, ABSENT_CLASS_PROB, 1 - ABSENT_CLASS_PROB))


def predict_probe(probe: dict, x: np.ndarray) -> np.ndarray:
    """Probabilities (n x outputs, float64) of raw features ``x`` under a probe (the
    content of ``probe.json``): standardise, then the fitted linear model(s)."""
    mean, scale = np.asarray(probe["scaler"]["mean"]), np.asarray(probe["scaler"]["scale"])
    if x.ndim != 2 or x.shape[1] != len(mean):
        raise ProbeError(f"features of width {x.shape[-1]} for a probe fitted on {len(mean)} features")
    z = (np.asarray(x, dtype=np.float64) - mean) / scale
    n, k = len(z), len(probe["classes"])
    m = probe["model"]
    if m["type"] == "multilabel":
        out = np.empty((n, k))
        for j, lab in enumerate(m["labels"]):
            out[:, j] = lab["constant"] if "constant" in lab else expit(z @ np.asarray(lab["coef"]) + lab["intercept"])
        return out
    if m["type"] == "constant":
        return np.tile(np.asarray(m["prob"], dtype=np.float64), (n, 1))
    fitted = m["fitted_classes"]
    logits = z @ np.asarray(m["coef"]).T + np.asarray(m["intercept"])
    if logits.shape[1] == 1:  # two classes: scikit-learn's single logistic, p(fitted[1])
        p1 = expit(logits[:, 0])
        p = np.stack([1 - p1, p1], 1)
    else:
        p = softmax(logits, axis=1)
    absent = [c for c in range(k) if c not in fitted]
    out = np.full((n, k), ABSENT_CLASS_PROB)
    out[:, fitted] = p * (1 - ABSENT_CLASS_PROB * len(absent))
    return out


def _loss(task: TaskSpec, y: np.ndarray, prob: np.ndarray) -> float:
    """Mean cross-entropy (single-label) or the mean binary cross-entropy over known
    labels (multilabel), as the training engine's validation loss."""
    if not len(y):
        return math.nan
    eps = 1e-12
    if task.multilabel:
        known = ~np.isnan(y)
        p = np.clip(prob, eps, 1 - eps)
        t = np.nan_to_num(y)
        per = -(t * np.log(p) + (1 - t) * np.log(1 - p))
        return float((per * known).sum() / max(known.sum(), 1))
    return float(-np.mean(np.log(np.clip(prob[np.arange(len(y)), y.astype(int)], eps, None))))


class _Fitter:
    """The logistic regression(s) of a task, refitted per ``C`` with warm starts."""

    def __init__(self, task: TaskSpec, x: np.ndarray, y: np.ndarray, max_iter: int, seed: int):
        from sklearn.linear_model import LogisticRegression

        self.task, self.x, self.y = task, x, y
        self.absent: list[str] = []
        self.constant: list[str] = []
        make = lambda: LogisticRegression(solver="lbfgs", max_iter=max_iter, warm_start=True,  # noqa: E731
                                          random_state=seed)
        if task.multilabel:
            self.units = []
            for j, name in enumerate(task.names):
                known = ~np.isnan(y[:, j])
                yj = y[known, j].astype(int)
                if len(np.unique(yj)) < 2:
                    self.constant.append(name)
                    self.units.append({"constant": _constant(yj.mean() if len(yj) else 0.5), "n": int(known.sum())})
                else:
                    self.units.append({"lr": make(), "known": known, "y": yj, "n": int(known.sum())})
        else:
            present = np.unique(y)
            self.fitted = [int(c) for c in present]
            self.absent = [task.names[c] for c in range(task.num_outputs) if c not in self.fitted]
            if len(present) < 2:
                counts = np.bincount(y, minlength=task.num_outputs) / max(len(y), 1)
                prob = np.array([_constant(p) for p in counts])
                self.constant = list(task.names)
                self.const_prob = prob / prob.sum()
                self.lr = None
            else:
                self.lr = make()

    def fit(self, c: float) -> tuple[dict, int, bool]:
        """The model (``probe.json`` form) fitted with ``C = c``, its largest iteration
        count and whether every fit converged."""
        from sklearn.exceptions import ConvergenceWarning

        n_iter = 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            if self.task.multilabel:
                labels = []
                for u in self.units:
                    if "constant" in u:
                        labels.append({"constant": u["constant"], "n_train": u["n"]})
                        continue
                    u["lr"].set_params(C=c).fit(self.x[u["known"]], u["y"])
                    n_iter = max(n_iter, int(np.max(u["lr"].n_iter_)))
                    labels.append({"coef": u["lr"].coef_[0].tolist(), "intercept": float(u["lr"].intercept_[0]),
                                   "n_train": u["n"]})
                model = {"type": "multilabel", "labels": labels}
            elif self.lr is None:
                model = {"type": "constant", "prob": self.const_prob.tolist()}
            else:
                self.lr.set_params(C=c).fit(self.x, self.y)
                n_iter = int(np.max(self.lr.n_iter_))
                model = {"type": "softmax" if len(self.fitted) > 2 else "logistic", "fitted_classes": self.fitted,
                         "coef": self.lr.coef_.tolist(), "intercept": self.lr.intercept_.tolist()}
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        for w in caught:  # non-convergence is recorded per C; anything else is shown as usual
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return model, n_iter, converged


# ----------------------------------------------------------------------------- a run


def _resources(t0: float) -> dict:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": round(time.time() - t0, 3), "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
            "max_rss_mb": round(ru.ru_maxrss / 1024, 1)}


def _check_c_values(c_values) -> list[float]:
    vals = sorted({float(c) for c in c_values})
    if not vals or any(not math.isfinite(c) or c <= 0 for c in vals):
        raise ProbeError(f"c_values must be positive numbers, got {list(c_values)!r}")
    return vals


def probe_sets(spec: ProbeSpec) -> dict[str, pd.DataFrame]:
    """train / val / test rows of the run: :func:`~fundusfm.train.sets.select_sets` with the
    run's fold, fraction, seed and hparams, as the fine-tune of the same run key selects
    them (image files are not needed: features are joined on ``image`` instead)."""
    df, col = read_task_table(spec.table, spec.fold)
    return select_sets(df, col, table=spec.table, task=spec.task, fraction=spec.fraction, seed=spec.seed,
                       hparams=spec.hparams, check_files=False)


def run_probe(spec: ProbeSpec) -> dict:
    """Fit the probe of one run and write its outputs into ``spec.out`` (all or nothing):
    predictions_val.csv, predictions_test.csv, probe.json, history.csv,
    train_config.json, model.json. Returns the model.json content."""
    import sklearn
    from sklearn.preprocessing import StandardScaler

    from fundusfm.fileio import atomic_write_many, csv_writer

    t0 = time.time()
    task, hp = spec.task, spec.hparams
    c_values = _check_c_values(spec.c_values)
    if not isinstance(spec.max_iter, int) or spec.max_iter < 1:
        raise ProbeError(f"max_iter must be a positive integer, got {spec.max_iter!r}")
    sets = probe_sets(spec)
    col = f"fold{spec.fold}"
    y = {k: encode_targets(v, task, f"{spec.table} [{k}]") for k, v in sets.items()}
    loaded = read_features(spec.features)
    fmeta = loaded[2]
    x = {k: features_for(v["image"].tolist(), spec.features, loaded, what=f"{spec.table} ({k}, {col})")
         for k, v in sets.items()}
    log.info("rows: %s; %d features (%s)", {k: len(v) for k, v in sets.items()}, fmeta["feature_dim"],
             fmeta.get("model", {}).get("arch"))

    scaler = StandardScaler().fit(x["train"].astype(np.float64))
    z = {k: scaler.transform(v.astype(np.float64)) if len(v) else v.astype(np.float64) for k, v in x.items()}
    fitter = _Fitter(task, z["train"], y["train"], spec.max_iter, spec.seed)
    if fitter.absent:
        log.warning("class(es) %s absent from the %d training rows: %s", fitter.absent, len(y["train"]),
                    ABSENT_CLASS_RULE)
    if fitter.constant:
        log.warning("constant prediction for %s (one value in the training rows): %s", fitter.constant,
                    ABSENT_CLASS_RULE)

    has_val = len(y["val"]) > 0
    wanted = hp["monitor"]
    monitor, note = effective_monitor(wanted, task, y["val"] if has_val else None)
    if not has_val:
        monitor, note = "loss", "train loss (no validation rows)"
        log.warning("no validation rows: C is chosen on the training loss")
    elif monitor != wanted:
        log.warning("val_%s is undefined on the validation set (%d images): C is chosen on the validation loss",
                    wanted, len(y["val"]))
    probe_base = {"format": PROBE_FORMAT, "format_version": 1, "task": task.as_dict(), "classes": list(task.names),
                  "task_type": task.type, "feature_dim": int(fmeta["feature_dim"]),
                  "scaler": {"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist()}}

    history, models = [], []
    best, best_i = None, None
    for i, c in enumerate(c_values):
        t1 = time.perf_counter()
        model, n_iter, converged = fitter.fit(c)
        fit_s = time.perf_counter() - t1
        probe = probe_base | {"model": model}
        p_train = predict_probe(probe, x["train"])
        train_loss = _loss(task, y["train"], p_train)
        row = {"epoch": i, "c": c, "log10_c": math.log10(c), "train_loss": train_loss}
        if has_val:
            p_val = predict_probe(probe, x["val"])
            val_loss = _loss(task, y["val"], p_val)
            value = monitor_value(monitor, task, y["val"], p_val, val_loss)
            if monitor != wanted:
                row[f"val_{wanted}"] = monitor_value(wanted, task, y["val"], p_val, val_loss)
        else:
            val_loss, value = math.nan, train_loss
        row.update({"val_loss": val_loss, f"val_{monitor}": value if has_val else math.nan,
                    "monitor_fallback": int(monitor != wanted), "n_iter": n_iter, "converged": int(converged),
                    "time": round(fit_s, 4)})
        history.append(row)
        models.append(model)
        if is_better(monitor, value, best) or best_i is None:  # strict: a tie keeps the smaller C
            best, best_i = value, i
        log.info("C %g: train_loss %.4f val_loss %.4f val_%s %.4f%s (%d iterations, %.2fs)", c, train_loss, val_loss,
                 monitor, value, "" if converged else " NOT CONVERGED", n_iter, fit_s)
    best_c = c_values[best_i]
    if not history[best_i]["converged"]:
        log.warning("the chosen C %g did not converge in max_iter %d iterations", best_c, spec.max_iter)

    probe = probe_base | {
        "model": models[best_i], "c": best_c, "monitor": monitor, "monitor_requested": wanted, "monitor_note": note,
        "best_value": best, "solver": "lbfgs", "penalty": "l2", "max_iter": spec.max_iter,
        "warm_start": "across C, smallest first", "tie_rule": "smaller C",
        "absent_classes": fitter.absent, "constant_outputs": fitter.constant, "absent_class_rule": ABSENT_CLASS_RULE,
        "sweep": [{"c": r["c"], f"val_{monitor}": r[f"val_{monitor}"], "val_loss": r["val_loss"],
                   "train_loss": r["train_loss"], "fit_s": r["time"], "n_iter": r["n_iter"],
                   "converged": bool(r["converged"])} for r in history],
        "features": {"path": str(spec.features), "model": fmeta.get("model"), "init": _init_brief(fmeta)},
    }
    preds = {k: predictions_frame(sets[k], y[k], predict_probe(probe, x[k]), task) for k in EVAL_SETS}
    definition = fmeta.get("model") or {}
    meta = {**{k: definition.get(k) for k in ("arch", "head", "img_size", "mean", "std")},
            "num_classes": task.num_outputs, "classes": list(task.names), "task_type": task.type,
            "task": task.as_dict(), "init": spec.init_name or _init_brief(fmeta).get("name"),
            "init_spec": _init_brief(fmeta).get("spec"), "mode": "linear", "adaptation": "linear",
            "fold": spec.fold, "fraction": spec.fraction, "seed": spec.seed, "best_c": best_c, "best_epoch": best_i,
            "best_value": best, "monitor": monitor, "monitor_requested": wanted, "monitor_note": note,
            "feature_dim": int(fmeta["feature_dim"]), "absent_classes": fitter.absent,
            "constant_outputs": fitter.constant, "probe": PROBE_FILE}
    config = {"adaptation": "linear", "table": spec.table, "fold": spec.fold, "fraction": spec.fraction,
              "seed": spec.seed, "task": task.as_dict(), "init": spec.init_name, "hparams": hp,
              "c_values": c_values, "max_iter": spec.max_iter,
              "features": {"path": str(spec.features), "meta": fmeta},
              "n_images": {k: len(v) for k, v in sets.items()},
              "versions": {"scikit-learn": sklearn.__version__, "numpy": np.__version__},
              "resources": _resources(t0)}
    hist = pd.DataFrame(history)
    out = Path(spec.out)
    dumps = lambda obj: json.dumps(obj, indent=2, default=str)  # noqa: E731
    writes = [(out / f"predictions_{k}.csv", csv_writer(d)) for k, d in preds.items()]
    writes += [
        (out / PROBE_FILE, lambda p: p.write_text(json.dumps(probe, default=str))),
        (out / "history.csv", csv_writer(hist)),
        (out / "train_config.json", lambda p: p.write_text(dumps(config))),
        (out / "model.json", lambda p: p.write_text(dumps(meta))),
    ]
    atomic_write_many(writes)
    log.info("linear probe: C %g chosen on val_%s %.4f; outputs in %s; used %s", best_c, monitor,
             best if best is not None else math.nan, out, config["resources"])
    return meta


def _init_brief(fmeta: dict) -> dict:
    init = fmeta.get("init") or {}
    return {k: init.get(k) for k in ("name", "spec", "summary")}


# ----------------------------------------------------------------------------- applying a saved probe


def is_probe_dir(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` is a linear-probe run (it holds ``probe.json``)."""
    return (Path(model_dir) / PROBE_FILE).is_file()


def load_probe(model_dir: str | Path) -> dict:
    """``probe.json`` of a linear-probe run, checked."""
    path = Path(model_dir) / PROBE_FILE
    try:
        probe = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProbeError(f"{path} not found: is {model_dir} a finished linear-probe run?") from None
    except json.JSONDecodeError as exc:
        raise ProbeError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(probe, dict) or probe.get("format") != PROBE_FORMAT:
        raise ProbeError(f"{path}: key 'format' is not {PROBE_FORMAT!r}")
    missing = [k for k in ("task", "classes", "scaler", "model", "feature_dim") if k not in probe]
    if missing:
        raise ProbeError(f"{path}: key(s) {missing} missing")
    return probe


def check_features_match(probe: dict, fmeta: dict, features: str | Path, model_dir: str | Path) -> None:
    """Refuse features of another model than the probe's (definition, init spec, width)."""
    want = probe.get("features") or {}
    if fmeta.get("feature_dim") != probe["feature_dim"]:
        raise ProbeError(f"{features}: {fmeta.get('feature_dim')} features per image, the probe in {model_dir} "
                         f"was fitted on {probe['feature_dim']}")
    if want.get("model") is not None and fmeta.get("model") != want["model"]:
        raise ProbeError(f"{features}: features of model {fmeta.get('model')}, the probe in {model_dir} was "
                         f"fitted on features of {want['model']}")
    spec, have = (want.get("init") or {}).get("spec"), (fmeta.get("init") or {}).get("spec")
    if spec is not None and have is not None and spec != have:
        raise ProbeError(f"{features}: features of init {have!r}, the probe in {model_dir} was fitted on "
                         f"features of init {spec!r}")


def predict_rows(model_dir: str | Path, rows: pd.DataFrame, features: str | Path, what: str = "") -> np.ndarray:
    """Probabilities of table ``rows`` from their features in ``features`` under the
    saved probe of ``model_dir`` (no refit)."""
    probe = load_probe(model_dir)
    loaded = read_features(features)
    check_features_match(probe, loaded[2], features, model_dir)
    x = features_for(rows["image"].tolist(), features, loaded, what=what)
    return predict_probe(probe, x)

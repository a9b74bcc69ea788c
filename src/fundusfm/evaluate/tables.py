"""Paper-style study tables of one task: CSV (every number), Markdown and LaTeX (display).

One block per evaluation set (internal test first, then each external set); rows are
init x adaptation (fine-tune, linear probe) x label fraction; a cell reads
``mean ± sd [lo, hi]`` with Student's t 95% interval over the n runs (n - 1 df; n =
folds x seeds) when n >= 3, ``mean (range lo–hi)`` when n = 2 (too few runs for an
across-run interval), and ``value [lo, hi]†`` for a single run (its patient-bootstrap
95% CI). The headline column holds the interval combining
run-to-run variation with patient sampling (two-level bootstrap of the across-run mean,
:func:`fundusfm.evaluate.study.headline_intervals`). Comparison columns give the mean
difference in the compared metric versus the reference init *in the same adaptation*
(runs paired on set, fraction, fold and seed) and the paired patient-bootstrap p-value;
when a task has both adaptations, a further column gives each linear probe's difference
from the fine-tune of the same init. No bound lies outside the metric's range. The
caption under each block, generated from the numbers, says which interval a cell holds
and over what n. A "Models" section (and ``<prefix>_models.csv``) lists per init its
architecture, size, input, normalisation, feature dimension, measured throughput and what
its recipe changes (:func:`model_table`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fundusfm.fileio import write_csv, write_text
from fundusfm.evaluate.aggregate import (AGG_COLUMNS, GROUP_KEYS, LEVEL, MIN_RUNS_FOR_INTERVAL, init_rank,
                                         sort_runs)
from fundusfm.layout import ADAPTATIONS

log = logging.getLogger(__name__)
DIGITS = 3
SINGLE_RUN_MARK = "†"
HEADLINE_MARK = "‡"
LABELS = {
    "auroc": "AUROC", "auroc_micro": "AUROC (micro)", "aupr": "AUPR", "aupr_micro": "AUPR (micro)",
    "accuracy": "Accuracy", "balanced_accuracy": "Bal. accuracy", "f1_macro": "Macro F1",
    "sensitivity": "Sensitivity", "specificity": "Specificity",
    "sensitivity_val_threshold": "Sensitivity (val thr.)", "specificity_val_threshold": "Specificity (val thr.)",
    "kappa_quadratic": "Quadratic κ", "ece": "ECE", "brier": "Brier",
}


ADAPTATION_LABELS = {"finetune": "fine-tune", "linear": "linear probe"}


def adaptation_label(a: str) -> str:
    return ADAPTATION_LABELS.get(a, a)


def metric_label(m: str) -> str:
    base, _, cls = m.partition(":")
    lab = LABELS.get(base, base)
    return f"{lab} ({cls})" if cls else lab


def wide_table(long: pd.DataFrame, comparisons: pd.DataFrame | None = None,
               headline: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (set, init, adaptation, fraction); per metric the columns ``<metric>__<stat>``.

    ``comparisons`` (optional): rows with ``set, init, adaptation, fraction, metric,
    reference, diff, diff_lo, diff_hi, p_value, n_runs`` (:mod:`fundusfm.evaluate.study`)
    become columns ``<metric>__diff_vs_<ref>``, ``<metric>__p_vs_<ref>`` etc. (``<ref>``:
    the reference init, or ``finetune`` for linear probes against their init's fine-tune).
    ``headline`` (optional, from :func:`fundusfm.evaluate.study.headline_intervals`)
    becomes ``<metric>__hl_lo``, ``<metric>__hl_hi``, ``<metric>__hl_n_runs``,
    ``<metric>__hl_n_boot``.
    """
    idx = list(GROUP_KEYS)
    if long.empty:
        return pd.DataFrame(columns=idx)
    parts = []
    metrics = list(dict.fromkeys(long["metric"]))
    runs = long.assign(_n=long["n"] + long["n_undefined"]).groupby(idx, sort=False)["_n"].max()
    base = long[idx].drop_duplicates().reset_index(drop=True)
    base["n_runs"] = [int(runs.loc[k]) for k in base[idx].itertuples(index=False)]
    for m in metrics:
        sub = long[long["metric"] == m].set_index(idx)[AGG_COLUMNS]
        sub.columns = [f"{m}__{c}" for c in AGG_COLUMNS]
        parts.append(sub)
    wide = base.set_index(idx).join(parts).reset_index()
    if comparisons is not None and not comparisons.empty:
        for (m, ref), sub in comparisons.groupby(["metric", "reference"], sort=False):
            cols = sub.set_index(idx)[["diff", "diff_lo", "diff_hi", "p_value", "n_runs"]]
            cols.columns = [f"{m}__{c}_vs_{ref}" for c in ("diff", "diff_lo", "diff_hi", "p", "n_runs")]
            wide = wide.set_index(idx).join(cols).reset_index()
    if headline is not None and not headline.empty:
        for m, sub in headline.groupby("metric", sort=False):
            cols = sub.set_index(idx)[["hl_lo", "hl_hi", "hl_n_runs", "hl_n_boot"]]
            cols.columns = [f"{m}__{c}" for c in cols.columns]
            wide = wide.set_index(idx).join(cols).reset_index()
    return sort_runs(wide)


def _num(x, digits: int = DIGITS) -> str:
    return f"{x:.{digits}f}"


def _defined(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def format_cell(row: pd.Series, metric: str, digits: int = DIGITS) -> str:
    """``mean ± sd [t lo, t hi]`` (n >= 3); ``mean (range lo–hi)`` (n = 2); single run:
    ``value [boot lo, boot hi]†``; none: ``n/a``."""
    g = lambda c: row.get(f"{metric}__{c}")  # noqa: E731
    n = g("n")
    if not _defined(g("mean")) or not n:
        return "n/a"
    if _defined(g("ci_lo")):
        return f"{_num(g('mean'), digits)} ± {_num(g('sd'), digits)} [{_num(g('ci_lo'), digits)}, {_num(g('ci_hi'), digits)}]"
    if n >= 2 and _defined(g("range_lo")):
        return f"{_num(g('mean'), digits)} (range {_num(g('range_lo'), digits)}–{_num(g('range_hi'), digits)})"
    if _defined(g("boot_lo")):
        return f"{_num(g('mean'), digits)} [{_num(g('boot_lo'), digits)}, {_num(g('boot_hi'), digits)}]{SINGLE_RUN_MARK}"
    return f"{_num(g('mean'), digits)}{SINGLE_RUN_MARK}"


def format_headline(row: pd.Series, metric: str, digits: int = DIGITS) -> str:
    lo, hi = row.get(f"{metric}__hl_lo"), row.get(f"{metric}__hl_hi")
    if not _defined(lo):
        return "n/a"
    return f"[{_num(lo, digits)}, {_num(hi, digits)}]"


def headline_column(metric: str) -> str:
    return f"{metric_label(metric)} {LEVEL:.0%} CI{HEADLINE_MARK}"


def format_p(p) -> str:
    if not _defined(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def format_fraction(f: float) -> str:
    return f"{f * 100:g}%"


def display_blocks(wide: pd.DataFrame, metrics: Sequence[str], digits: int = DIGITS) -> dict[str, pd.DataFrame]:
    """Per set, the display table (strings): Init, Adaptation, Labels, n, one column per
    metric, and the comparison columns present in ``wide`` ("—" on the reference arm's
    own rows)."""
    blocks = {}
    comp_cols = [c for c in wide.columns if "__diff_vs_" in c]
    hl_metrics = [c[: -len("__hl_lo")] for c in wide.columns if c.endswith("__hl_lo")]
    for s in dict.fromkeys(wide["set"]):
        sub = wide[wide["set"] == s]
        rows = []
        for _, r in sub.iterrows():
            d = {"Init": r["init"], "Adaptation": adaptation_label(r["adaptation"]),
                 "Labels": format_fraction(r["fraction"]), "n": str(int(r["n_runs"]))}
            first = metrics[0] if metrics else None
            if first is not None and _defined(r.get(f"{first}__n_undefined")) and r[f"{first}__n_undefined"]:
                d["n"] += f" ({int(r[f'{first}__n_undefined'])} undefined)"
            for m in metrics:
                if f"{m}__mean" in wide.columns:
                    d[metric_label(m)] = format_cell(r, m, digits)
                if m in hl_metrics:
                    d[headline_column(m)] = format_headline(r, m, digits)
            for c in comp_cols:
                m, ref = c.split("__diff_vs_")
                diff, p = r.get(c), r.get(f"{m}__p_vs_{ref}")
                # the reference arm: the reference init, or (linear vs fine-tune) the fine-tune
                own = r["adaptation"] == ref if ref in ADAPTATIONS else r["init"] == ref
                d[f"Δ{metric_label(m)} vs {adaptation_label(ref) if ref in ADAPTATIONS else ref} (p)"] = (
                    "—" if own else
                    "n/a" if not _defined(diff) else f"{diff:+.{digits}f} ({format_p(p)})"
                )
            rows.append(d)
        blocks[s] = pd.DataFrame(rows)
    return blocks


def set_title(s: str) -> str:
    if s == "test":
        return "Internal test set"
    if s == "val":
        return "Validation set"
    if s.startswith("external_"):
        return f"External set: {s[len('external_'):]}"
    return s


def caption(wide: pd.DataFrame, set_name: str, metrics: Sequence[str]) -> str:
    """What the cells of one block are, and over what n, from the numbers themselves."""
    sub = wide[wide["set"] == set_name]
    first = metrics[0] if metrics else None
    ns = sorted({int(x) for x in sub.get(f"{first}__n", pd.Series(dtype=float)).dropna()}) if first else []
    parts = [f"n = runs (folds × seeds) per row: {', '.join(map(str, ns)) or 'none'}."]
    if any(n >= MIN_RUNS_FOR_INTERVAL for n in ns):
        parts.append(f"Rows with n ≥ {MIN_RUNS_FOR_INTERVAL}: mean ± sd [Student's t {LEVEL:.0%} interval of the "
                     "mean over the n runs, n − 1 degrees of freedom].")
    if 2 in ns:
        parts.append(f"Rows with n = 2: mean and the range of the two runs, no across-run interval "
                     f"(fewer than {MIN_RUNS_FOR_INTERVAL} runs).")
    if 1 in ns:
        parts.append(f"{SINGLE_RUN_MARK}: a single run, with its patient-bootstrap {LEVEL:.0%} CI.")
    hl = [c for c in sub.columns if c.endswith("__hl_lo")]
    if hl:
        m = hl[0][: -len("__hl_lo")]
        nb = sub.get(f"{m}__hl_n_boot", pd.Series(dtype=float)).dropna()
        parts.append(f"{HEADLINE_MARK}: {LEVEL:.0%} interval of the across-run mean of {metric_label(m)} combining "
                     "run-to-run variation and patient sampling (bootstrap: the n runs drawn with replacement, "
                     f"then the evaluated patients with replacement; {int(nb.iloc[0]) if len(nb) else '?'} resamples).")
    refs = {c.split("__diff_vs_")[1] for c in sub.columns if "__diff_vs_" in c}
    if refs - set(ADAPTATIONS):
        both = "adaptation" in sub.columns and sub["adaptation"].nunique() > 1
        same = (" in the same adaptation (a linear probe vs the reference's linear probe, a fine-tune vs its "
                "fine-tune; runs paired on fraction, fold and seed)" if both else
                " (runs paired on fraction, fold and seed)")
        parts.append(f"Δ: mean paired difference vs the reference init{same} on the same images, p from a paired "
                     "patient bootstrap.")
    if refs & set(ADAPTATIONS):
        parts.append("Δ vs fine-tune: a linear probe's mean paired difference vs the fine-tune of the same init "
                     "(same fraction, fold, seed and images), p from a paired patient bootstrap.")
    parts.append("No bound lies outside the metric's range; 'undefined' counts runs where the metric "
                 "could not be computed (left out of n).")
    return " ".join(parts)


# ------------------------------------------------------------------------- the models

# the model-facts keys (``fundusfm model-facts``: results/models/<task>/<init>.json) a
# table row carries, then what the config says (recipe); a missing key is left empty
FACT_KEYS = ("arch", "head", "img_size", "mean", "std", "params", "params_backbone", "feature_dim",
             "throughput_img_s", "device", "torch_threads")
MODEL_COLUMNS = ["init", *FACT_KEYS, "normalisation", "recipe", "adaptations"]
MISSING = "—"


def read_model_facts(paths: Sequence[str | Path]) -> dict[str, dict]:
    """Model-facts JSONs by init (the file's ``init``, else its name: ``<init>.json``).
    Raises ValueError naming the file for anything but a JSON object, and for two files
    of one init."""
    import json

    out: dict[str, dict] = {}
    where: dict[str, Path] = {}
    for path in map(Path, paths):
        try:
            rec = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON file of model facts ({e})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: model facts must be a JSON object (keys init, arch, params, ...), "
                             f"got {type(rec).__name__}")
        rec = _flat_facts(rec)
        init = str(rec.get("init") or path.stem)
        if init in out:
            raise ValueError(f"two model-facts files for init {init!r}: {where[init]} and {path}")
        out[init], where[init] = rec, path
    return out


def _flat_facts(rec: dict) -> dict:
    """A model-facts record (``fundusfm model-facts``: ``params_total``, and the measured
    ``throughput`` as an object) as the flat :data:`FACT_KEYS` of a table row."""
    out = dict(rec)
    if "params" not in out and "params_total" in out:
        out["params"] = out["params_total"]
    speed = out.get("throughput")
    if isinstance(speed, dict):
        out.setdefault("throughput_img_s", speed.get("images_per_s"))
        device = speed.get("device")
        name = speed.get("device_name")
        out.setdefault("device", f"{device} ({name})" if device and name and name != device else device or name)
        out.setdefault("torch_threads", speed.get("torch_threads"))
    return out


def normalisation_name(mean, std) -> str | None:
    """The name of a normalisation (``imagenet``, ``inception``, ``clip``, ``none`` of
    :data:`fundusfm.train.config.NORMALISATIONS`) or its numbers; None when unknown."""
    if mean is None or std is None:
        return None
    if isinstance(mean, str) and isinstance(std, str) and mean == std:
        return mean
    try:
        m, sd = [float(x) for x in mean], [float(x) for x in std]
    except (TypeError, ValueError):
        return f"mean {mean}, std {std}"
    from fundusfm.train.config import NORMALISATIONS

    for name, (nm, ns) in NORMALISATIONS.items():
        if all(math.isclose(a, b, abs_tol=5e-4) for a, b in zip([*m, *sd], [*nm, *ns])):
            return name
    return "mean " + "/".join(f"{x:.3f}" for x in m) + ", std " + "/".join(f"{x:.3f}" for x in sd)


def model_table(inits: Sequence[str], facts: dict[str, dict] | None = None,
                protocol: dict | None = None, adaptations: dict[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """One row per init (display order) with :data:`MODEL_COLUMNS`.

    ``facts``: model-facts JSONs by init (measured: parameters, feature dimension,
    throughput, the model as built). ``protocol``: the task's protocol facts
    (:func:`fundusfm.evaluate.protocol.config_facts`): its ``models.<init>.definition``
    fills keys the facts lack, ``models.<init>.recipe`` gives the recipe column (what the
    init's runs train with beyond the task's hparams). ``adaptations``: per init, the
    adaptations of its runs. Keys nobody knows stay empty (rendered "—").
    """
    import json

    facts = facts or {}
    config_models = (protocol or {}).get("models") or {}
    names = sorted(dict.fromkeys([*inits, *facts, *config_models]), key=init_rank)
    rows = []
    for init in names:
        own, cfg = facts.get(init) or {}, config_models.get(init) or {}
        definition = cfg.get("definition") or {}
        row = {"init": init}
        for k in FACT_KEYS:
            v = own.get(k)
            row[k] = definition.get(k) if v is None else v
            if v is not None and k in ("arch", "img_size", "head") and definition.get(k) not in (None, v):
                log.warning("model facts of %s: %s is %r but the config's model definition says %r (facts "
                            "measured on another model? rerun fundusfm model-facts); the table shows the facts",
                            init, k, v, definition[k])
        for k in ("mean", "std", "img_size"):  # CSV cells: numbers, space-separated
            if isinstance(row[k], (list, tuple)):
                row[k] = " ".join(f"{float(x):g}" for x in row[k])
        raw_mean = own.get("mean") if own.get("mean") is not None else definition.get("mean")
        raw_std = own.get("std") if own.get("std") is not None else definition.get("std")
        row["normalisation"] = normalisation_name(raw_mean, raw_std)
        recipe = cfg.get("recipe")
        row["recipe"] = None if recipe is None else json.dumps(recipe, sort_keys=True)
        adapt = (adaptations or {}).get(init)
        row["adaptations"] = " ".join(a for a in ADAPTATIONS if a in adapt) if adapt else None
        rows.append(row)
    return pd.DataFrame(rows, columns=MODEL_COLUMNS)


def _cell(v, fmt=str) -> str:
    return MISSING if not _defined(v) or v == "" else fmt(v)


def _recipe_text(value) -> str:
    import json

    if not _defined(value):
        return MISSING
    recipe = json.loads(value)
    if not recipe:
        return "none (the task's hparams)"
    return ", ".join(f"{k} {v}" for k, v in recipe.items())


def _throughput_text(row) -> str:
    x = row.get("throughput_img_s")
    if not _defined(x):
        return MISSING
    text = f"{float(x):,.0f}"
    if _defined(row.get("device")):
        text += f" on {row['device']}"
        if _defined(row.get("torch_threads")) and str(row["device"]).startswith("cpu"):
            n = int(row["torch_threads"])
            text += f" ({n} thread{'s' if n != 1 else ''})"
    return text


def _size_text(v) -> str:
    # an int, or (h, w) / "h w" when an init's input is not square
    parts = v.split() if isinstance(v, str) else v if isinstance(v, (list, tuple)) else [v]
    return "×".join(str(int(float(x))) for x in parts)


def _params_text(row) -> str:
    total, backbone = row.get("params"), row.get("params_backbone")
    if not _defined(total) and not _defined(backbone):
        return MISSING
    if not _defined(total):
        return f"backbone {float(backbone) / 1e6:.1f}"
    text = f"{float(total) / 1e6:.1f}"
    return text + (f" (backbone {float(backbone) / 1e6:.1f})" if _defined(backbone) else "")


def models_display(models: pd.DataFrame) -> pd.DataFrame:
    """The Models section (strings; "—" where a fact is unknown)."""
    rows = []
    for r in models.to_dict("records"):
        rows.append({
            "Init": r["init"], "Architecture": _cell(r.get("arch")),
            "Params (M)": _params_text(r), "Input (px)": _cell(r.get("img_size"), _size_text),
            "Normalisation": _cell(r.get("normalisation")),
            "Feature dim": _cell(r.get("feature_dim"), lambda v: str(int(v))),
            "Throughput (img/s)": _throughput_text(r),
            "Recipe vs task hparams": _recipe_text(r.get("recipe")),
        })
    return pd.DataFrame(rows, columns=["Init", "Architecture", "Params (M)", "Input (px)", "Normalisation",
                                       "Feature dim", "Throughput (img/s)", "Recipe vs task hparams"])


MODELS_CAPTION = ("Per init: the network its runs use (architecture; parameters in millions, the whole network "
                  "and its backbone without the classification head; input size; normalisation of the input), "
                  "the dimension of its frozen features (the linear probe's input) and its throughput in images "
                  "per second on the device named, as measured by `fundusfm model-facts`; recipe: the "
                  "hyper-parameters its fine-tunes train with beyond the task's own `hparams`. "
                  "— : not known.")


def has_model_facts(models: pd.DataFrame | None) -> bool:
    """Whether any fact beyond the init's name is known (else no Models section)."""
    return models is not None and not models.empty and bool(models.drop(columns=["init", "adaptations"]).notna()
                                                                  .to_numpy().any())


def _markdown_table(df: pd.DataFrame) -> list[str]:
    cols = list(df.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        out.append("| " + " | ".join(str(r[c]).replace("|", "\\|") for c in cols) + " |")
    return out


def to_markdown(blocks: dict[str, pd.DataFrame], task: str, captions: dict[str, str] | None = None,
                card: str | None = None, models: pd.DataFrame | None = None) -> str:
    """The study table in Markdown: the card, one section per set, then ``models``
    (:func:`models_display`) when given."""
    out = [f"# {task}", ""]
    if card:
        out += [card.rstrip(), ""]
    for s, df in blocks.items():
        out += [f"## {set_title(s)}", ""]
        out += _markdown_table(df)
        out.append("")
        if captions and s in captions:
            out += [captions[s], ""]
    if models is not None:
        out += ["## Models", ""] + _markdown_table(models) + ["", MODELS_CAPTION, ""]
    return "\n".join(out) + "\n"


_TEX_ESCAPE = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
               "±": r"$\pm$", "Δ": r"$\Delta$", "κ": r"$\kappa$", "†": r"$^\dagger$", "—": "--",
               "<": r"$<$", "‡": r"$^\ddagger$", "≥": r"$\geq$", "−": "-", "×": r"$\times$", "–": "--"}


def tex_escape(s: str) -> str:
    return "".join(_TEX_ESCAPE.get(ch, ch) for ch in str(s))


# the display columns set left-aligned in LaTeX (the others are numbers)
TEXT_COLUMNS = ("Init", "Adaptation", "Labels")


def to_latex(blocks: dict[str, pd.DataFrame], task: str, captions: dict[str, str] | None = None,
             models: pd.DataFrame | None = None) -> str:
    """Booktabs tables, one per set, then ``models`` when given (needs ``\\usepackage{booktabs}``)."""
    out = [f"% study table of task {task} (generated by fundusfm table)"]
    tables = [(set_title(s), df, captions.get(s) if captions else None) for s, df in blocks.items()]
    if models is not None:
        tables.append(("Models", models, MODELS_CAPTION))
    for title, df, cap in tables:
        cols = list(df.columns)
        align = "".join("l" if c in TEXT_COLUMNS or df is models else "r" for c in cols)
        out += [r"\begin{table}[ht]", r"\centering", r"\scriptsize",
                rf"\caption{{{tex_escape(task)}: {tex_escape(title)}}}",
                r"\begin{tabular}{" + align + "}", r"\toprule",
                " & ".join(tex_escape(c) for c in cols) + r" \\", r"\midrule"]
        for _, r in df.iterrows():
            out.append(" & ".join(tex_escape(r[c]) for c in cols) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}"]
        if cap:
            out += [r"\par\smallskip{\tiny " + tex_escape(cap.replace("`", "")) + "}"]
        out += [r"\end{table}", ""]
    return "\n".join(out)


# files beside a task's table PREFIX.csv: PREFIX<suffix>.csv (not study tables themselves)
COMPANION_SUFFIXES = ("_comparisons", "_models")


def is_study_table(path: str | Path) -> bool:
    """Whether a CSV in the tables folder is a task's study table (``<task>.csv``), not
    one of its companions (``<task>_comparisons.csv``, ``<task>_models.csv`` beside ``<task>.csv``)."""
    path = Path(path)
    for suffix in COMPANION_SUFFIXES:
        if path.stem.endswith(suffix) and path.with_name(path.stem[: -len(suffix)] + ".csv").is_file():
            return False
    return True


def write_tables(wide: pd.DataFrame, metrics: Sequence[str], task: str, out_prefix: str | Path,
                 digits: int = DIGITS, card: str | None = None, models: pd.DataFrame | None = None) -> list[Path]:
    """Write ``<prefix>.csv`` (all numbers), ``<prefix>.md`` (the protocol ``card`` first)
    and ``<prefix>.tex``; with ``models`` (:func:`model_table`) also ``<prefix>_models.csv``,
    and a Models section in the Markdown and LaTeX when any fact is known."""
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = [prefix.with_name(prefix.name + ext) for ext in (".csv", ".md", ".tex")]
    write_csv(paths[0], wide, float_format="%.10g")
    blocks = display_blocks(wide, metrics, digits)
    captions = {s: caption(wide, s, metrics) for s in blocks}
    shown = models_display(models) if has_model_facts(models) else None
    write_text(paths[1], to_markdown(blocks, task, captions, card, shown))
    write_text(paths[2], to_latex(blocks, task, captions, shown))
    if models is not None:
        paths.append(prefix.with_name(prefix.name + "_models.csv"))
        write_csv(paths[-1], models, float_format="%.10g")
    return paths

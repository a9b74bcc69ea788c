"""Paper-style study tables of one task: CSV (every number), Markdown and LaTeX (display).

One block per evaluation set (internal test first, then each external set); rows are
init x label fraction; a cell reads ``mean ± sd [lo, hi]`` with Student's t 95% interval
over the n runs (n - 1 df; n = folds x seeds) when n >= 3, ``mean (range lo–hi)`` when
n = 2 (too few runs for an across-run interval), and ``value [lo, hi]†`` for a single run
(its patient-bootstrap 95% CI). The headline column holds the interval combining
run-to-run variation with patient sampling (two-level bootstrap of the across-run mean,
:func:`fundusfm.evaluate.study.headline_intervals`). Comparison columns give the mean
difference in the compared metric versus the reference init and the paired
patient-bootstrap p-value. No bound lies outside the metric's range. The caption under
each block, generated from the numbers, says which interval a cell holds and over what n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fundusfm.evaluate.aggregate import AGG_COLUMNS, LEVEL, MIN_RUNS_FOR_INTERVAL, sort_runs

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


def metric_label(m: str) -> str:
    base, _, cls = m.partition(":")
    lab = LABELS.get(base, base)
    return f"{lab} ({cls})" if cls else lab


def wide_table(long: pd.DataFrame, comparisons: pd.DataFrame | None = None,
               headline: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (set, init, fraction); per metric the columns ``<metric>__<stat>``.

    ``comparisons`` (optional): rows with ``set, init, fraction, metric, reference,
    diff, diff_lo, diff_hi, p_value, n_runs`` become columns ``<metric>__diff_vs_<ref>``,
    ``<metric>__p_vs_<ref>`` etc. ``headline`` (optional, from
    :func:`fundusfm.evaluate.study.headline_intervals`) becomes ``<metric>__hl_lo``,
    ``<metric>__hl_hi``, ``<metric>__hl_n_runs``, ``<metric>__hl_n_boot``.
    """
    idx = ["set", "init", "fraction"]
    if long.empty:
        return pd.DataFrame(columns=idx)
    parts = []
    metrics = list(dict.fromkeys(long["metric"]))
    base = long[idx].drop_duplicates().reset_index(drop=True)
    base["n_runs"] = [int(long[(long["set"] == s) & (long["init"] == i) & (long["fraction"] == f)][["n", "n_undefined"]]
                          .sum(axis=1).max()) for s, i, f in base[idx].itertuples(index=False)]
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
    """Per set, the display table (strings): Init, Labels, n, one column per metric, and
    the comparison columns present in ``wide``."""
    blocks = {}
    comp_cols = [c for c in wide.columns if "__diff_vs_" in c]
    hl_metrics = [c[: -len("__hl_lo")] for c in wide.columns if c.endswith("__hl_lo")]
    for s in dict.fromkeys(wide["set"]):
        sub = wide[wide["set"] == s]
        rows = []
        for _, r in sub.iterrows():
            d = {"Init": r["init"], "Labels": format_fraction(r["fraction"]), "n": str(int(r["n_runs"]))}
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
                d[f"Δ{metric_label(m)} vs {ref} (p)"] = (
                    "—" if r["init"] == ref else
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
    if any("__diff_vs_" in c for c in sub.columns):
        parts.append("Δ: mean paired difference vs the reference init on the same images, p from a paired "
                     "patient bootstrap.")
    parts.append("No bound lies outside the metric's range; 'undefined' counts runs where the metric "
                 "could not be computed (left out of n).")
    return " ".join(parts)


def to_markdown(blocks: dict[str, pd.DataFrame], task: str, captions: dict[str, str] | None = None,
                card: str | None = None) -> str:
    out = [f"# {task}", ""]
    if card:
        out += [card.rstrip(), ""]
    for s, df in blocks.items():
        out += [f"## {set_title(s)}", ""]
        cols = list(df.columns)
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "|".join("---" for _ in cols) + "|")
        for _, r in df.iterrows():
            out.append("| " + " | ".join(str(r[c]).replace("|", "\\|") for c in cols) + " |")
        out.append("")
        if captions and s in captions:
            out += [captions[s], ""]
    return "\n".join(out) + "\n"


_TEX_ESCAPE = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
               "±": r"$\pm$", "Δ": r"$\Delta$", "κ": r"$\kappa$", "†": r"$^\dagger$", "—": "--",
               "<": r"$<$", "‡": r"$^\ddagger$", "≥": r"$\geq$", "−": "-", "×": r"$\times$", "–": "--"}


def tex_escape(s: str) -> str:
    return "".join(_TEX_ESCAPE.get(ch, ch) for ch in str(s))


def to_latex(blocks: dict[str, pd.DataFrame], task: str, captions: dict[str, str] | None = None) -> str:
    """Booktabs tables, one per set (needs ``\\usepackage{booktabs}``)."""
    out = [f"% study table of task {task} (generated by fundusfm table)"]
    for s, df in blocks.items():
        cols = list(df.columns)
        out += [r"\begin{table}[ht]", r"\centering", r"\scriptsize",
                rf"\caption{{{tex_escape(task)}: {tex_escape(set_title(s))}}}",
                r"\begin{tabular}{" + "ll" + "r" * (len(cols) - 2) + "}", r"\toprule",
                " & ".join(tex_escape(c) for c in cols) + r" \\", r"\midrule"]
        for _, r in df.iterrows():
            out.append(" & ".join(tex_escape(r[c]) for c in cols) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}"]
        if captions and s in captions:
            out += [r"\par\smallskip{\tiny " + tex_escape(captions[s]) + "}"]
        out += [r"\end{table}", ""]
    return "\n".join(out)


def write_tables(wide: pd.DataFrame, metrics: Sequence[str], task: str, out_prefix: str | Path,
                 digits: int = DIGITS, card: str | None = None) -> list[Path]:
    """Write ``<prefix>.csv`` (all numbers), ``<prefix>.md`` (the protocol ``card`` first)
    and ``<prefix>.tex``."""
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = [prefix.with_name(prefix.name + ext) for ext in (".csv", ".md", ".tex")]
    wide.to_csv(paths[0], index=False, float_format="%.10g")
    blocks = display_blocks(wide, metrics, digits)
    captions = {s: caption(wide, s, metrics) for s in blocks}
    paths[1].write_text(to_markdown(blocks, task, captions, card))
    paths[2].write_text(to_latex(blocks, task, captions))
    return paths

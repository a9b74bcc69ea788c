"""The protocol card: what a study table compares, and how, written from the resolved
config and the result files (never by hand).

It stands at the top of each task's Markdown table and of ``results/report.html``. It
says what is compared (inits x adaptations), what is held constant and where the arms
differ (each init's model definition and recipe), how the linear probe works, how models
and thresholds are selected, what the intervals are, which overlaps were removed, and
which datasets have only image-level splits. Facts come from three places: the resolved config
(:func:`config_facts`, passed to the CLI as JSON), the runs' own records
(``train_config.json`` / ``model.json`` beside the predictions: what the runs actually
did), and the split tables and ``results/overlap/overlap.csv``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fundusfm.evaluate.aggregate import LEVEL, MIN_RUNS_FOR_INTERVAL
from fundusfm.evaluate.io import adaptation_of
from fundusfm.evaluate.metrics import ABSENT_CLASS_POLICY

# hyper-parameters the fine-tunes of a task share unless an init's own model definition or
# recipe changes them (the card then says where the arms differ)
HELD_CONSTANT = ("arch", "head", "img_size", "epochs", "batch_size", "lr", "weight_decay", "mode", "imbalance",
                 "patience")
# where the weights of the built-in inits come from
BUILTIN_WEIGHTS = {
    "random": "none (random initialisation)",
    "imagenet": "timm's ImageNet weights of the architecture",
    "fundus": "this study's pretraining from random (safetensors)",
    "imagenet+fundus": "this study's pretraining from ImageNet (safetensors)",
}


def model_facts(config: dict, task: str, init: str) -> dict:
    """What one init brings to a task (from the resolved config): its model definition
    (``fundusfm.config.model_definition``), its recipe (the non-model keys of
    ``fundusfm.config.recipe_overrides``), every key where its runs differ from the task's
    hyper-parameters (``changes``: ``{key: {"task": ..., "init": ...}}``), and where its
    weights come from (checkpoint, format, published, licence)."""
    from fundusfm import config as fcfg
    from fundusfm.train.config import resolve_hparams

    task_hp = resolve_hparams(fcfg.hparams(config, task))
    # what differs from the task's resolved hyper-parameters (a recipe repeating a default is no change)
    overrides = {k: v for k, v in fcfg.recipe_overrides(config, task, init).items() if task_hp.get(k) != v}
    entry = config["inits"].get(init) or {}
    out = {
        "definition": fcfg.model_definition(config, task, init),
        "recipe": {k: v for k, v in overrides.items() if k not in fcfg.MODEL_KEYS},
        "changes": {k: {"task": task_hp.get(k), "init": v} for k, v in sorted(overrides.items())},
        "weights": BUILTIN_WEIGHTS.get(init) if not entry else None,
        "checkpoint": entry.get("checkpoint"), "format": entry.get("format"),
    }
    for k in ("published", "licence"):
        if entry.get(k):
            out[k] = entry[k]
    return out


def config_facts(config: dict, task: str) -> dict:
    """The card's facts from a resolved config (``fundusfm.config.validate``)."""
    from fundusfm import config as fcfg
    from fundusfm.train.config import resolve_hparams

    t = config["tasks"][task]
    hp = resolve_hparams(fcfg.hparams(config, task))
    pt = config["pretrain"]
    shared = sorted(set(pt.get("also_in_tasks", [])) & set(t["datasets"] + t.get("external", [])))
    adaptations = list(t["adaptations"])
    return {
        "task": task, "type": t["type"], "inits": list(t["inits"]), "reference": t["compare_to"],
        "adaptations": adaptations,
        "models": {init: model_facts(config, task, init) for init in t["inits"]},
        "linear_probe": dict(config["linear_probe"]) if "linear" in adaptations else None,
        "fractions": [float(f) for f in t["fractions"]], "seeds": list(t["seeds"]),
        "split": dict(t["split"]), "folds": fcfg.split_folds(t), "run_folds": fcfg.run_folds(t),
        "datasets": list(t["datasets"]), "external": list(t.get("external", [])),
        "hparams": {k: hp[k] for k in (*HELD_CONSTANT, "monitor", "carry_head", "val_labels", "val_min_patients")},
        "augment": hp["augment"],
        "pretrain_datasets": list(pt["datasets"]), "exclude_overlaps": bool(pt["exclude_overlaps"]),
        "also_in_tasks": shared, "n_boot": int(config["report"]["n_boot"]),
    }


# ------------------------------------------------------------------------- result files

def run_facts(records: Sequence[dict]) -> dict:
    """What the fine-tunes did, from ``train_config.json`` / ``model.json`` beside each
    run's predictions: hidden head layers carried, validation policy, monitor fallbacks
    (``n_linear_dirs``: the linear probes' folders, not read)."""
    tuned = [r for r in records if adaptation_of(r) == "finetune"]
    linear = {str(Path(r["predictions"]).parent) for r in records if r.get("predictions") and r not in tuned}
    dirs = sorted({str(Path(r["predictions"]).parent) for r in tuned if r.get("predictions")})
    carry, val_labels, fallbacks, seen = {}, {}, 0, 0
    for d in dirs:
        cfg_path, meta_path = Path(d) / "train_config.json", Path(d) / "model.json"
        if cfg_path.is_file():
            hp = json.loads(cfg_path.read_text()).get("hparams", {})
            carry[hp.get("carry_head", "none")] = carry.get(hp.get("carry_head", "none"), 0) + 1
            val_labels[hp.get("val_labels", "fraction")] = val_labels.get(hp.get("val_labels", "fraction"), 0) + 1
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            seen += 1
            fallbacks += int(meta.get("monitor_requested", meta.get("monitor")) != meta.get("monitor"))
    return {"n_run_dirs": len(dirs), "carry_head": carry, "val_labels": val_labels,
            "monitor_fallbacks": fallbacks, "n_models": seen, "n_linear_dirs": len(linear)}


def undefined_runs(records: Sequence[dict], metric: str) -> dict[str, int]:
    """Per evaluated set: runs whose ``metric`` is undefined (left out of the aggregate)."""
    out: dict[str, int] = {}
    for r in records:
        if r["metrics"].get(metric) is None:
            out[r["set"]] = out.get(r["set"], 0) + 1
    return out


def split_levels(tables: Sequence[str | Path]) -> dict[str, dict]:
    """Per dataset of the split tables: ``level`` (``patient`` when the dataset has
    patient ids, else ``image``), groups, images and near-duplicate merges."""
    out: dict[str, dict] = {}
    for path in tables:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "group_source" not in df.columns:
            df["group_source"] = "patient_id"
            df["split_group"] = df["dataset"] + "/" + df["patient_id"]
        for ds, g in df.groupby("dataset"):
            src = g["group_source"]
            rec = out.setdefault(ds, {"images": 0, "groups": 0, "merged_groups": 0, "level": "patient"})
            rec["images"] = max(rec["images"], len(g))
            rec["groups"] = max(rec["groups"], g["split_group"].nunique())
            merged = g.loc[src.str.startswith("near-duplicate"), "split_group"].nunique()
            rec["merged_groups"] = max(rec["merged_groups"], merged)
            if not src.str.contains("patient_id").any():
                rec["level"] = "image"
    return out


def overlap_counts(overlap_csv: str | Path | None, task: str | None, datasets: Sequence[str]) -> dict[str, int]:
    """Pairs per kind in the study's overlap report that concern ``task`` (its own
    pairs, and upstream pairs with one of its ``datasets``)."""
    if overlap_csv is None or not Path(overlap_csv).is_file():
        return {}
    pairs = pd.read_csv(overlap_csv, dtype=str, keep_default_na=False)
    if "task" not in pairs.columns:
        pairs["task"] = ""
    mine = (pairs["task"] == task) if task is not None else pd.Series(True, index=pairs.index)
    up = (pairs["task"] == "") & pairs["dataset_b"].isin(list(datasets))
    sel = pairs[mine | up] if task is not None else pairs
    counts = sel["kind"].value_counts().to_dict()
    if "cross" in counts:
        counts["cross_upstream_images"] = sel.loc[sel["kind"] == "cross", ["dataset_a", "image_id_a"]].drop_duplicates().shape[0]
    if "development_external" in counts:
        counts["external_images_excluded"] = sel.loc[sel["kind"] == "development_external",
                                                     ["dataset_b", "image_id_b"]].drop_duplicates().shape[0]
    return {k: int(v) for k, v in counts.items()}


# ------------------------------------------------------------------------- the card

def _frac(f: float) -> str:
    return f"{f * 100:g}%"


def _norm_text(mean, std) -> str:
    if mean is None and std is None:
        return "the architecture's timm default"
    if isinstance(mean, str) and mean == std:
        return mean
    fmt = lambda v: v if isinstance(v, str) else "/".join(f"{float(x):g}" for x in v)  # noqa: E731
    return f"mean {fmt(mean)}, std {fmt(std)}" if mean is not None and std is not None else \
        f"mean {fmt(mean) if mean is not None else 'default'}, std {fmt(std) if std is not None else 'default'}"


def _value(v, key: str = "") -> str:
    if isinstance(v, (list, tuple)):
        return "/".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    if v is None:  # unset: the architecture's own normalisation, else the key is off
        return "the architecture's timm default" if key in ("mean", "std") else "none"
    return str(v)


def model_items(facts: dict) -> list[tuple[str, str]]:
    """The card's lines on the models: each init's definition and weights, and where the
    arms differ from the task's hyper-parameters (model definition or recipe)."""
    models = facts.get("models") or {}
    if not models:
        return []
    lines, differ = [], []
    for init in facts["inits"]:
        m = models.get(init)
        if not m:
            continue
        d = m["definition"]
        weights = m.get("weights") or (f"{{{m['checkpoint']}}} (format {m.get('format') or 'auto'})"
                                       if m.get("checkpoint") else "—")
        extra = "".join(f", {k} {m[k]}" for k in ("published", "licence") if m.get(k))
        lines.append(f"{init}: {d.get('arch')} at {d.get('img_size')} px, {d.get('head')} head, normalisation "
                     f"{_norm_text(d.get('mean'), d.get('std'))}; weights: {weights}{extra}")
        if m.get("changes"):
            differ.append(f"{init}: " + ", ".join(f"{k} {_value(c['init'], k)} (task: {_value(c['task'], k)})"
                                                  for k, c in m["changes"].items()))
    items = [("Models", "; ".join(lines) + ".")]
    if differ:
        items.append(("Arms differ beyond the init",
                      "these inits bring their own model definition or fine-tuning recipe ({inits.<name>}), so their "
                      "arms differ in more than the starting weights: " + "; ".join(differ) + "."))
    return items


def linear_probe_text(facts: dict) -> str:
    """The linear probe's protocol, from the resolved ``linear_probe`` settings."""
    lp = facts.get("linear_probe") or {}
    cs = ", ".join(f"{c:g}" for c in lp.get("c_values", [])) or "?"
    return ("frozen features of each init extracted once per image and cached "
            f"({{results/features/{facts['task']}/<init>/}}), standardised, then a logistic regression per run, its "
            f"inverse regularisation C swept over {cs} ({{linear_probe.c_values}}) and chosen on validation; fitted "
            "on the training rows of the same fold, label fraction and seed as the fine-tunes "
            f"(max_iter {lp.get('max_iter', '?')}); no network weights are trained, so activation maps come from "
            "fine-tunes only.")


def card_items(facts: dict, runs: dict | None = None, levels: dict | None = None,
               overlaps: dict | None = None, undefined: dict | None = None) -> list[tuple[str, str]]:
    """``(heading, text)`` lines of the card; ``{key}`` marks a config key or file."""
    hp, runs, levels, overlaps, undefined = facts["hparams"], runs or {}, levels or {}, overlaps or {}, undefined or {}
    inits = ", ".join(facts["inits"])
    split = facts["split"]
    strategy = split.get("strategy", "kfold")
    if strategy == "kfold":
        where = (f"test fold(s) {', '.join(map(str, facts['run_folds']))} of a {facts['folds']}-fold "
                 "split-group (patient) stratified cross-validation")
    else:
        where = f"the {strategy} split's test set"
    ext = f"; external set(s): {', '.join(facts['external'])}" if facts["external"] else ""
    adaptations = facts.get("adaptations") or ["finetune"]
    linear = "linear" in adaptations
    how = {("finetune",): "", ("linear",): "linear-probed ",
           ("finetune", "linear"): "each fine-tuned and linear-probed (every Δ pairs runs of the same adaptation; "
                                   "a linear probe is also compared with its own init's fine-tune) "}
    items = [("What is compared",
              f"inits {inits} (reference for Δ and p: {facts['reference']}) "
              f"{how.get(tuple(a for a in ('finetune', 'linear') if a in adaptations), '')}"
              f"at {', '.join(map(_frac, facts['fractions']))} "
              f"of the labelled development data, on {where}{ext}; seeds {', '.join(map(str, facts['seeds']))}.")]
    carried = runs.get("carry_head") or {hp["carry_head"]: None}
    carry_txt = ("hidden head layers carried from checkpoints ({carry_head}: hidden)" if "hidden" in carried
                 else "no head weights carried from any checkpoint ({carry_head}: none)")
    changed = {k for m in (facts.get("models") or {}).values() for k in m.get("changes", {})}
    held = ", ".join(f"{k} {hp[k]}" for k in HELD_CONSTANT if k in hp and k not in changed)
    who = "every fine-tune" if linear else "every init"
    but = f" (except where the arms differ, below: {', '.join(sorted(changed))})" if changed else ""
    items.append(("Held constant",
                  f"{who} trains with the same hyper-parameters ({held}){but}, augmentation, folds, label-fraction "
                  "subsets and seeds; the final classifier layer starts fresh for every init; " + carry_txt + "."))
    items += model_items(facts)
    if linear:
        items.append(("Linear probe", linear_probe_text(facts)))
    if hp["val_labels"] == "fraction":
        val = (f"validation shrinks with the label fraction like training (at least {hp['val_min_patients']} "
               "patients per stratum; {val_labels}: fraction)")
    else:
        val = "the full validation set is kept at every label fraction ({val_labels}: full)"
    fb = runs.get("monitor_fallbacks")
    fb_txt = (f"; {fb} of {runs.get('n_models')} runs fell back to the validation loss (metric undefined on "
              "their validation set)") if fb else ""
    items.append(("Model and threshold selection",
                  f"{'fine-tunes: ' if linear else ''}the epoch with the best validation {hp['monitor']} "
                  f"(validation loss when it is undefined){fb_txt}; "
                  f"{val}; decision thresholds (\"val thr.\" columns) by Youden's J on validation; the activation-map "
                  f"model is chosen {'among the fine-tunes ' if linear else ''}on validation AUROC, never on test. "
                  "Absent classes: " + ABSENT_CLASS_POLICY +
                  (f" (undefined runs per set: {', '.join(f'{k} {v}' for k, v in sorted(undefined.items()))})"
                   if undefined else "") + "."))
    items.append(("Intervals",
                  f"across runs, Student's t {LEVEL:.0%} interval with n − 1 df when n ≥ {MIN_RUNS_FOR_INTERVAL}; "
                  "with n = 2 the runs' range and no interval; a single run shows its patient-bootstrap CI; the ‡ "
                  "column combines run-to-run variation with patient sampling (two-level bootstrap, "
                  f"{facts['n_boot']} resamples), for internal and external sets alike; bounds lie inside the "
                  "metric's range; n (runs per row) is in each table."))
    ov = []
    if overlaps.get("cross"):
        act = "left out of pretraining" if facts["exclude_overlaps"] else "reported only ({exclude_overlaps}: false)"
        ov.append(f"{overlaps.get('cross_upstream_images', overlaps['cross'])} pretraining image(s) matching this "
                  f"task's images {act}")
    if overlaps.get("development_external"):
        ov.append(f"{overlaps.get('external_images_excluded')} external image(s) duplicating a development image "
                  "excluded from the external set")
    if overlaps.get("within_development"):
        ov.append(f"{overlaps['within_development']} development near-duplicate pair(s) put into one split group")
    items.append(("Overlaps removed", ("; ".join(ov) if ov else "none found") +
                  " (every pair and what was done: {results/overlap/overlap.csv})."))
    if levels:
        lv = []
        for ds, rec in sorted(levels.items()):
            if rec["level"] == "image":
                lv.append(f"{ds}: image-level split and CIs (no patient ids; {rec['merged_groups']} near-duplicate "
                          "cluster(s) merged)")
            else:
                extra = f", {rec['merged_groups']} merged with near-duplicates" if rec["merged_groups"] else ""
                lv.append(f"{ds}: patient-level ({rec['groups']} split groups{extra})")
        items.append(("Split and CI level per dataset", "; ".join(lv) + "."))
    if facts.get("also_in_tasks"):
        items.append(("Override", f"dataset(s) {', '.join(facts['also_in_tasks'])} used both for pretraining and in "
                      "this task ({pretrain.also_in_tasks}): their evaluation is not independent of pretraining."))
    return items


def _code(text: str, fmt: str) -> str:
    tick = "``" if fmt == "rst" else "`"
    return re.sub(r"\{([^{}]+)\}", lambda m: f"{tick}{m.group(1)}{tick}", text)


def card_markdown(items: list[tuple[str, str]], title: str = "Protocol card") -> str:
    lines = [f"**{title}** (generated from the resolved config and the result files)", ""]
    lines += [f"- **{h}:** {_code(t, 'md')}" for h, t in items]
    return "\n".join(lines) + "\n"


def card_rst(sections: list[tuple[str, list[tuple[str, str]]]], title: str = "Protocol card") -> str:
    """reStructuredText for the report's front page (one section per task)."""
    out = [title, "=" * len(title), "", "Generated from the resolved config and the result files.", ""]
    for name, items in sections:
        out += [name, "-" * len(name), ""]
        out += [f"- **{h}:** {_code(t, 'rst')}" for h, t in items]
        out.append("")
    return "\n".join(out) + "\n"

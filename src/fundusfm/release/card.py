"""The model card (``README.md`` of a release), rendered from ``config.json`` alone."""

from __future__ import annotations

CARD_TEMPLATE_VERSION = 1


def _f(x, nd: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def _ci(lo, hi) -> str:
    return "" if lo is None or hi is None else f" [{_f(lo)}, {_f(hi)}]"


def _own_metrics(own: dict | None) -> list[str]:
    if not own:
        return ["No held-out test predictions were available for the released model itself."]
    lines = [f"Held-out test set of the released model's own training split: {own['n_images']} images, "
             f"{own['n_patients']} patients; 95% CI by patient-level bootstrap "
             f"({own.get('bootstrap', {}).get('n_boot', '?')} resamples).", "",
             "| metric | value [95% CI] |", "|---|---|"]
    for k, v in own["metrics"].items():
        if v is None or k.startswith("threshold"):
            continue
        ci = (own.get("ci") or {}).get(k) or [None, None]
        lines.append(f"| {k} | {_f(v)}{_ci(*ci)} |")
    und = own.get("undefined") or {}
    if und:
        lines += ["", "Undefined on this set: " + "; ".join(f"{k} ({v})" for k, v in sorted(und.items()))]
    return lines


def _study_metrics(study: dict) -> list[str]:
    if not study:
        return ["No study tables were given to the export (`--tables`)."]
    lines = ["Downstream tasks of the study, fine-tuned from each initialisation "
             "(`fundus` = from this model's pretraining; mean over folds × seeds with the 95% interval "
             "combining run-to-run variation and patient sampling, see the study tables' captions):", ""]
    for task, rows in sorted(study.items()):
        lines += [f"**{task}**", "", "| set | init | label fraction | runs | metric | mean [95% CI] |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            frac = "n/a" if r["fraction"] is None else f"{r['fraction']:g}"
            lines.append(f"| {r['set']} | {r['init']} | {frac} | {r['n_runs'] if r['n_runs'] is not None else '?'} "
                         f"| {r['metric']} | {_f(r['mean'])}{_ci(r['ci_lo'], r['ci_hi'])} |")
        lines.append("")
    return lines


def _training(tr: dict) -> list[str]:
    if "datasets" not in tr:
        return [tr.get("note", "Training data unknown.")]
    lines = [f"Task table `{tr['task_table']}` (SHA-256 `{tr['task_table_sha256'][:16]}…`), fold {tr['fold']}, "
             f"label fraction {tr.get('label_fraction')}, seed {tr.get('seed')}. Training datasets: "
             f"{', '.join(tr.get('training_datasets', [])) or 'none'}.", "",
             "| dataset | images | patients | images by role | manifest rows | manifest SHA-256 |",
             "|---|---|---|---|---|---|"]
    for ds, e in sorted(tr["datasets"].items()):
        roles = ", ".join(f"{k} {v}" for k, v in e["images_by_role"].items())
        man = e.get("manifest") or {}
        lines.append(f"| {ds} | {e['n_images']} | {e['n_patients']} | {roles} | {man.get('n_images', '?')} "
                     f"| `{man.get('sha256', '?')[:16]}…` |")
    return lines


def _authorship(ff: dict) -> list[str]:
    a = ff.get("authorship") or {"signed": False}
    integrity = ("`config.json` carries the SHA-256 of itself and of every release file (`fundusfm.signature`, "
                 "`fundusfm.files`): `fundusfm predict` and `fundusfm.load_model` refuse a changed file.")
    if not a.get("signed"):
        return [f"**Integrity only, unsigned.** {integrity} Anyone can recompute those digests after an edit, so "
                "they do not show who made the release; ask its author for a signed export "
                "(`fundusfm export --sign-key`)."]
    return [f"**Signed** with Ed25519 key `{a['key_id']}`. {integrity} Verify the author with "
            "`fundusfm predict --trusted-key AUTHOR.pub ...` or `fundusfm.load_model(DIR, trusted_keys=['AUTHOR.pub'])` "
            "(or list trusted keys in `$FUNDUSFM_TRUSTED_KEYS`): a release changed and re-signed without the key is "
            "refused. Get the public key from its author, not from this folder."]


def render_card(cfg: dict) -> str:
    """Markdown model card of a release ``config.json``."""
    ff = cfg["fundusfm"]
    m, pp, spec = ff["model"], ff["preprocessing"], ff["preprocessing"]["preprocess_spec"]
    v = ff["versions"]
    exp, trn = v.get("export", {}), v.get("training", {})
    src = ff["source"]
    title = ("fundusfm disease-specific fundus foundation model" if src.get("kind") == "foundation" else
             f"fundusfm model fine-tuned for task {src.get('task', '?')!r}")
    if src.get("study"):
        title += f" (study {src['study']!r})"
    lic = ff["licence"]
    lines = [
        "---", f"license: {lic.lower()}", "library_name: timm", "tags: [image-classification, ophthalmology, "
        "fundus, timm, fundusfm]", "---", "",
        f"# {title}", "",
        f"A {m['arch']} ({m['head']} head) trained by the fundusfm study workflow (after arXiv 2408.08790: "
        "a backbone pretrained on normal-vs-abnormal fundus labels, then fine-tuned downstream). "
        f"Outputs ({m['task_type']}): {', '.join(m['classes'])}. Initialisation: {m.get('init')}.", "",
        "## Intended use", "",
        "* Research: a starting point (backbone) for fine-tuning on retinal colour fundus photograph tasks, "
        "and screening-style *research* predictions on colour fundus photographs (probabilities and "
        "activation maps) to compare with the study.",
        "* Users who preprocess exactly as below (`fundusfm predict` / `fundusfm.load_model` do).", "",
        "## Not intended use", "",
        "* **Not a medical device.** Not for diagnosis, triage, treatment or any clinical decision, and not "
        "validated prospectively or on your population.",
        "* Not for images other than colour fundus photographs (OCT, fluorescein angiography, "
        "widefield/ultra-widefield, anterior segment, smartphone photos of screens); the quality check "
        "rejects many such images but is not a guarantee.",
        "* Not for populations, cameras or diseases absent from the training data below.", "",
        "## How to use", "",
        "```bash", "fundusfm predict --model RELEASE_DIR photos/ more.jpg list.csv --out predictions.csv --cam cams/",
        "```", "", "```python", "import fundusfm",
        "rel = fundusfm.load_model('RELEASE_DIR')          # model + its preprocessing",
        "row, x = rel.preprocess('photo.jpg')              # QC row; uint8 input or None if rejected",
        "probs = rel.predict(x[None]) if x is not None else None", "",
        "import timm                                       # backbone reuse with plain timm",
        "backbone = timm.create_model('local-dir:RELEASE_DIR', pretrained=True, num_classes=0)",
        f"new = timm.create_model('{m['arch']}', pretrained=True, num_classes=7,",
        "                         pretrained_cfg_overlay=dict(file='RELEASE_DIR/model.safetensors'))",
        "```", "",
        ("The weights hold the paper's head (Linear-BN-ReLU-Linear at `fc`); plain timm builds a linear "
         "head, so with timm alone load the backbone (`num_classes=0`) or a new head (`num_classes=K`); the "
         "full classifier loads with `fundusfm.load_model`." if m["head"] == "paper" else
         "The weights hold timm's own linear head: `timm.create_model('local-dir:RELEASE_DIR', "
         "pretrained=True)` is the full classifier (same logits as `fundusfm.load_model`)."), "",
        "The release is data only: `model.safetensors`, `config.json`, this card. Nothing is unpickled.", "",
        "## Authenticity", "", *_authorship(ff), "",
        "## Preprocessing (the model expects exactly this)", "",
        *[f"{i}. {s}" for i, s in enumerate(pp["steps"], 1)], "",
        f"Spec (`config.json` → `fundusfm.preprocessing.preprocess_spec`, algorithm version "
        f"{pp['algorithm_version']}): size {spec['size']}, normalise `{spec['normalise']}`, format "
        f"`{spec['format']}`, min side {spec['min_side']} px; mean {m['mean']}, std {m['std']}, input "
        f"{m['img_size']}×{m['img_size']} RGB.", "",
        "## Training data", "", *_training(ff["training"]), "",
        "Label vocabulary: `config.json` → `fundusfm.label_vocabulary` (harmonised columns, empty = unknown).", "",
        "## Metrics", "", "### Released model", "", *_own_metrics(ff["metrics"].get("released_model_test")), "",
        "### Study", "", *_study_metrics(ff["metrics"].get("study") or {}), "",
        "## Limitations", "",
        "* Metrics come from the study's own splits (patient-grouped) and its external sets only; "
        "performance on other cameras, populations and disease mixes is unknown.",
        "* The demo study trains on *synthetic* photographs: a model released from the demo has no clinical "
        "meaning and exists to test the release path.",
        "* Probabilities are not calibrated to your prevalence; thresholds need local validation.",
        "* Activation maps show where the network's evidence lies, not lesions; do not read them as "
        "segmentations.",
        "* Images the quality check rejects get no prediction (their row says why).", "",
        "## Licence", "", f"Weights and card: {lic}. Check the licences of the training datasets before any use.", "",
        "## Provenance", "",
        f"* Source run: `{ff['source'].get('run_dir')}` (best epoch {ff['source'].get('best_epoch')}, "
        f"{ff['source'].get('monitor')} {_f(ff['source'].get('best_value'))})",
        f"* Weights SHA-256: `{ff['files']['model.safetensors']['sha256']}`",
        f"* Exported with fundusfm {exp.get('fundusfm')}, torch {exp.get('torch')}, timm {exp.get('timm')}, "
        f"Python {exp.get('python')}; trained with torch {trn.get('torch', '?')}, timm {trn.get('timm', '?')}.",
        "",
    ]
    return "\n".join(lines)

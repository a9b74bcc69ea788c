"""CLI verbs of the evaluation stage: ``evaluate``, ``table``, ``figures``, ``protocol``, ``summary``, ``cam``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from fundusfm.fileio import write_csv, write_json, write_text
from fundusfm.jsonargs import load_json_arg

log = logging.getLogger("fundusfm.evaluate")


def _verbose(on: bool) -> None:
    if on:
        logging.getLogger("fundusfm").setLevel(logging.DEBUG)


def parse_meta(value: str) -> dict:
    """``--meta``: inline JSON or a JSON file with task, init, fold, fraction, seed, set
    and (optional, default ``finetune``) adaptation."""
    from fundusfm.evaluate.record import complete_meta

    meta = complete_meta(load_json_arg(value), "--meta")
    try:
        meta["fold"] = int(meta["fold"])
        meta["seed"] = int(meta["seed"])
        meta["fraction"] = float(meta["fraction"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"--meta: fold and seed must be integers and fraction a number ({e})") from None
    return meta


def evaluate_main(argv: list[str] | None = None) -> int:
    """``fundusfm evaluate``: metrics with patient-bootstrap CIs from a predictions CSV."""
    from fundusfm.evaluate.record import evaluate_run

    ap = argparse.ArgumentParser(prog="fundusfm evaluate", description=evaluate_main.__doc__)
    ap.add_argument("--predictions", required=True, help="predictions CSV (contract in docs/architecture.md)")
    ap.add_argument("--val-predictions", help="validation predictions of the same model (Youden threshold)")
    ap.add_argument("--task-json", required=True, help="task definition: inline JSON or a JSON file")
    ap.add_argument("--meta", required=True, help="JSON (inline or file) with task, init, fold, fraction, seed, set and "
                    "(optional) adaptation: finetune (default) or linear")
    ap.add_argument("--out", required=True, help="metrics JSON to write")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (patients) [1000]")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed [0]")
    ap.add_argument("--split-table", help="split table of the evaluated set (results/splits/<task>.csv, or "
                    "results/splits/<task>/external_<ds>.csv): the predictions must hold exactly its images of the "
                    "fold and set")
    ap.add_argument("--task-table", help="task table of the validation rows (default: --split-table)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    _verbose(args.verbose)
    try:
        meta = parse_meta(args.meta)
        task = load_json_arg(args.task_json)
        rec = evaluate_run(args.predictions, task, meta, args.val_predictions, n_boot=args.n_boot, seed=args.seed,
                           split_table=args.split_table, task_table=args.task_table)
    except (ValueError, FileNotFoundError) as e:
        log.error("%s", e)
        return 1
    write_json(args.out, rec, allow_nan=False)
    head = {k: rec["metrics"].get(k) for k in ("auroc", "accuracy") if k in rec["metrics"]}
    log.info("%s: %d images, %d patients, %s -> %s", args.predictions, rec["n_images"], rec["n_patients"], head, args.out)
    return 0


def table_main(argv: list[str] | None = None) -> int:
    """``fundusfm table``: the study table of one task (CSV, Markdown, LaTeX): every init x
    adaptation x label fraction, paired comparisons within each adaptation, and the models."""
    import pandas as pd

    from fundusfm.evaluate.aggregate import aggregate_records
    from fundusfm.evaluate.metrics import headline_metrics
    from fundusfm.evaluate.study import compare_adaptations, compare_inits, headline_intervals, load_records
    from fundusfm.evaluate.tables import model_table, read_model_facts, wide_table, write_tables
    from fundusfm.layout import ADAPTATIONS
    from fundusfm.task import TaskSpec

    ap = argparse.ArgumentParser(prog="fundusfm table", description=table_main.__doc__)
    ap.add_argument("--task", required=True, help="task name")
    ap.add_argument("--task-json", required=True, help="task definition: inline JSON or a JSON file")
    ap.add_argument("--metrics", nargs="+", required=True, help="metrics JSON files of the task's runs")
    ap.add_argument("--out-prefix", required=True, help="writes PREFIX.csv, PREFIX.md, PREFIX.tex, "
                    "PREFIX_models.csv (one row per init) and PREFIX_comparisons.csv (per-run paired tests)")
    ap.add_argument("--compare-to", default="random",
                    help="reference init for paired comparisons, each adaptation against the reference's runs of "
                         "the same adaptation ['random'; 'none' to skip]")
    ap.add_argument("--compare-metric", default="auroc", help="metric compared between inits [auroc]")
    ap.add_argument("--predictions-root", help="directory the predictions paths in the metrics JSONs are relative to")
    ap.add_argument("--metric-list", help="comma-separated metrics to show (default: the task type's headline)")
    ap.add_argument("--n-boot", type=int, default=1000, help="paired-bootstrap resamples [1000]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--protocol-json", help="the task's protocol facts from the resolved config "
                    "(fundusfm.evaluate.protocol.config_facts): a protocol card heads the Markdown table")
    ap.add_argument("--model-facts", nargs="*", default=[], metavar="JSON",
                    help="model facts per init (results/models/<task>/<init>.json, fundusfm model-facts): "
                         "the Models section and PREFIX_models.csv")
    ap.add_argument("--split-tables", nargs="*", default=[], help="the task's split tables (split level per dataset)")
    ap.add_argument("--overlap", help="the study's overlap report results/overlap/overlap.csv")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    _verbose(args.verbose)
    spec = TaskSpec.from_dict(load_json_arg(args.task_json), args.task)
    try:
        recs = load_records(args.metrics, task=args.task)
        facts_by_init = read_model_facts(args.model_facts)
    except ValueError as e:
        log.error("%s", e)
        return 1
    shown = args.metric_list.split(",") if args.metric_list else headline_metrics(spec.type)
    long = aggregate_records(recs)
    inits = {r["init"] for r in recs}
    adaptations = {a: {r["init"] for r in recs if r["adaptation"] == a} for a in ADAPTATIONS}
    ref = None if args.compare_to.lower() == "none" else args.compare_to
    if ref is not None and ref not in inits:
        log.warning("reference init %r not among the runs (%s); no paired comparisons", ref, sorted(inits))
        ref = None
    for a, arm_inits in adaptations.items():
        if ref is not None and arm_inits - {ref} and ref not in arm_inits:
            log.warning("reference init %r has no %s runs: the %s runs of %s are not compared", ref, a, a,
                        sorted(arm_inits))
    pooled, per_run = [], []
    if ref is not None:
        p, r = compare_inits(recs, spec, ref, metric=args.compare_metric, n_boot=args.n_boot,
                             seed=args.seed, root=args.predictions_root)
        pooled.append(p)
        per_run.append(r)
    both = [a for a, arm_inits in adaptations.items() if arm_inits]
    if len(both) > 1:
        clash = sorted(inits & set(ADAPTATIONS))
        if clash:  # its columns would be named like the adaptation comparison's
            log.warning("init(s) %s named like an adaptation: no linear-vs-fine-tune comparison", clash)
        else:
            p, r = compare_adaptations(recs, spec, metric=args.compare_metric, n_boot=args.n_boot,
                                       seed=args.seed, root=args.predictions_root)
            pooled.append(p)
            per_run.append(r)
    headline = None
    if args.compare_metric in shown and args.n_boot > 0:
        headline = headline_intervals(recs, spec, metric=args.compare_metric, n_boot=args.n_boot,
                                      seed=args.seed, root=args.predictions_root)
    wide = wide_table(long, pd.concat(pooled, ignore_index=True) if pooled else None, headline)
    card = facts = None
    if args.protocol_json:
        from fundusfm.evaluate import protocol

        facts = load_json_arg(args.protocol_json)
        items = protocol.card_items(
            facts, protocol.run_facts(recs), protocol.split_levels(args.split_tables),
            protocol.overlap_counts(args.overlap, args.task, facts["datasets"] + facts["external"]),
            protocol.undefined_runs(recs, args.compare_metric))
        card = protocol.card_markdown(items)
        write_json(Path(args.out_prefix).with_name(Path(args.out_prefix).name + "_protocol.json"),
                   {"facts": facts, "card": items})
    arms_of = {i: [a for a in ADAPTATIONS if i in adaptations[a]] for i in inits}
    models = model_table(sorted(inits), facts_by_init, facts, arms_of)
    paths = write_tables(wide, shown, args.task, args.out_prefix, card=card, models=models)
    comp_path = Path(args.out_prefix).with_name(Path(args.out_prefix).name + "_comparisons.csv")
    if per_run:
        per_run = pd.concat(per_run, ignore_index=True)
    else:  # no reference among the runs: a declared output all the same, header only
        per_run = compare_inits([], spec, args.compare_to, metric=args.compare_metric, n_boot=0)[1]
    write_csv(comp_path, per_run, float_format="%.10g")
    paths.append(comp_path)
    log.info("table of %s from %d runs (%s) -> %s", args.task, len(recs),
             ", ".join(f"{len(adaptations[a])} init(s) {a}" for a in both) or "none", ", ".join(map(str, paths)))
    return 0


def figures_main(argv: list[str] | None = None) -> int:
    """``fundusfm figures``: ROC/PR, label efficiency, confusion, calibration, training curves."""
    from fundusfm.evaluate.figures import make_figures
    from fundusfm.evaluate.study import load_records
    from fundusfm.task import TaskSpec

    ap = argparse.ArgumentParser(prog="fundusfm figures", description=figures_main.__doc__)
    ap.add_argument("--task", required=True)
    ap.add_argument("--task-json", required=True)
    ap.add_argument("--metrics", nargs="+", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--predictions-root", help="directory the predictions paths in the metrics JSONs are relative to")
    ap.add_argument("--sets", help="comma-separated sets to draw (default: all found)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    _verbose(args.verbose)
    spec = TaskSpec.from_dict(load_json_arg(args.task_json), args.task)
    recs = load_records(args.metrics, task=args.task)
    sets = args.sets.split(",") if args.sets else None
    paths = make_figures(recs, spec, args.out_dir, root=args.predictions_root, sets=sets)
    log.info("%d figures -> %s", len(paths), args.out_dir)
    return 0


def cam_main(argv: list[str] | None = None) -> int:
    """``fundusfm cam``: activation-map galleries (TP / FP / FN per class) of a trained model."""
    from fundusfm.evaluate.cam import run_cam

    ap = argparse.ArgumentParser(prog="fundusfm cam", description=cam_main.__doc__)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-dir", help="training output directory (model.safetensors, model.json)")
    which.add_argument("--best-of", nargs="+", metavar="METRICS_JSON",
                       help="pick, among these runs (test metrics files), the one with the best --best-metric "
                            "on its validation predictions (never chosen on the test set)")
    ap.add_argument("--best-metric", default="auroc")
    ap.add_argument("--task-json", help="task definition (needed with --best-of)")
    ap.add_argument("--table", required=True, help="task table results/splits/<task>.csv (image paths)")
    ap.add_argument("--fold", type=int, help="fold of the model (checks the images' role)")
    ap.add_argument("--predictions", help="the model's predictions CSV to select cases from")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--methods", default="gradcam,gradcampp", help="comma-separated: gradcam, gradcampp, "
                    "scorecam, eigencam, layercam, xgradcam, hirescam [gradcam,gradcampp]")
    ap.add_argument("--per-group", type=int, default=4, help="images per (class, TP/FP/FN) group [4]")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    _verbose(args.verbose)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.best_of:
        from fundusfm.evaluate.study import best_run_on_validation, load_records, predictions_path
        from fundusfm.task import TaskSpec

        if not args.task_json:
            ap.error("--best-of needs --task-json (the model is chosen on its validation predictions)")
        recs = load_records(args.best_of)
        spec = TaskSpec.from_dict(load_json_arg(args.task_json), recs[0]["task"] if recs else None)
        try:
            best, val = best_run_on_validation(recs, spec, args.best_metric)  # fine-tunes only
        except ValueError as e:
            log.error("%s", e)
            return 1
        args.predictions = str(predictions_path(best))
        args.model_dir = str(Path(args.predictions).parent)
        args.fold = int(best["fold"])
        log.info("model for the gallery chosen by validation %s=%s: %s", args.best_metric, val, args.model_dir)
        write_json(Path(args.out_dir) / "best_run.json",
                   {k: best[k] for k in ("task", "init", "adaptation", "fold", "fraction", "seed")}
                   | {"model_dir": args.model_dir, "chosen_on": "validation", f"val_{args.best_metric}": val,
                      f"test_{args.best_metric}": best["metrics"].get(args.best_metric)})
    elif args.fold is None or args.predictions is None:
        ap.error("--model-dir needs --fold and --predictions")
    else:
        from fundusfm.evaluate.cam import linear_probe_reason

        why = linear_probe_reason(args.model_dir)
        if why:
            log.error("%s", why)
            return 1
    paths = run_cam(args.model_dir, args.table, args.fold, args.predictions, args.out_dir,
                    methods=args.methods.split(","), per_group=args.per_group, device=args.device)
    log.info("%d CAM galleries -> %s", len(paths), args.out_dir)
    return 0


def protocol_main(argv: list[str] | None = None) -> int:
    """``fundusfm protocol``: the study's protocol card from the tasks' ``<task>_protocol.json``
    (written by ``fundusfm table``): Markdown, and reStructuredText for the report's front
    page (the static workflow description followed by the card)."""
    from fundusfm.evaluate.protocol import card_markdown, card_rst

    ap = argparse.ArgumentParser(prog="fundusfm protocol", description=protocol_main.__doc__)
    ap.add_argument("--cards", nargs="+", required=True, help="results/tables/<task>_protocol.json files")
    ap.add_argument("--intro", help="reStructuredText placed before the card (the workflow description)")
    ap.add_argument("--out-md", required=True)
    ap.add_argument("--out-rst", required=True)
    args = ap.parse_args(argv)
    sections = []
    for path in args.cards:
        rec = json.loads(Path(path).read_text())
        sections.append((f"Task {rec['facts']['task']}", [tuple(x) for x in rec["card"]]))
    md = "# Protocol card\n\n" + "\n".join(card_markdown(items, title=name) for name, items in sections)
    intro = Path(args.intro).read_text().rstrip() + "\n\n" if args.intro else ""
    for out, text in ((args.out_md, md), (args.out_rst, card_rst(sections) + "\n" + intro)):
        write_text(out, text)
    log.info("protocol card of %d task(s) -> %s, %s", len(sections), args.out_md, args.out_rst)
    return 0


def summary_main(argv: list[str] | None = None) -> int:
    """``fundusfm summary``: compact numbers of every study table for ``dvc metrics`` and
    ``dvc plots``: a nested JSON (task -> set -> init -> adaptation -> fraction -> metric)
    and a long CSV (one row per task, set, init, adaptation, fraction). Only overall metrics
    (``<metric>__mean`` columns) are kept; undefined values are null. A table without an
    ``adaptation`` column (older results) holds fine-tunes."""
    import math

    import pandas as pd

    from fundusfm.evaluate.io import DEFAULT_ADAPTATION
    from fundusfm.evaluate.tables import is_study_table

    ap = argparse.ArgumentParser(prog="fundusfm summary", description=summary_main.__doc__)
    ap.add_argument("--tables", default="results/tables", help="folder of <task>.csv study tables")
    ap.add_argument("--out-json", default="summary/metrics.json")
    ap.add_argument("--out-csv", default="summary/label_efficiency.csv")
    args = ap.parse_args(argv)
    rows = []
    keys = ("task", "set", "init", "adaptation", "fraction")
    for path in sorted(Path(args.tables).glob("*.csv")):
        if not is_study_table(path):
            continue
        for rec in pd.read_csv(path).to_dict("records"):
            values = {c[: -len("__mean")]: (None if pd.isna(v) or (isinstance(v, float) and math.isnan(v)) else float(v))
                      for c, v in rec.items() if c.endswith("__mean") and ":" not in c}
            adaptation = rec.get("adaptation")
            adaptation = DEFAULT_ADAPTATION if adaptation is None or pd.isna(adaptation) else str(adaptation)
            rows.append(dict(task=path.stem, set=str(rec["set"]), init=str(rec["init"]), adaptation=adaptation,
                             fraction=rec["fraction"], **values))
    nest: dict = {}
    for r in rows:
        metrics = {k: v for k, v in r.items() if k not in keys}
        (nest.setdefault(r["task"], {}).setdefault(r["set"], {}).setdefault(r["init"], {})
         .setdefault(r["adaptation"], {}))[f"frac{r['fraction']:g}"] = metrics
    write_json(args.out_json, nest, allow_nan=False)
    write_csv(args.out_csv, pd.DataFrame(rows), float_format="%.6g")
    log.info("summary of %d table rows -> %s, %s", len(rows), args.out_json, args.out_csv)
    return 0

"""``fundusfm ingest`` (dataset as distributed -> manifest), ``fundusfm split`` (a task's
image table with fold roles) and ``fundusfm overlap`` (shared images)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pandas as pd

from fundusfm.fileio import atomic_write, write_csv

log = logging.getLogger("fundusfm.data")


def _verbose(on: bool) -> None:
    if on:
        logging.getLogger("fundusfm").setLevel(logging.DEBUG)


PROBLEM_FIELDS = ("file", "row", "column", "value", "message")


def write_problems(path: Path, problems: list[dict]) -> None:
    """Every problem as a CSV (file, row, column, value, message), one line each."""
    frame = pd.DataFrame([{k: p.get(k, "") for k in PROBLEM_FIELDS} for p in problems], columns=list(PROBLEM_FIELDS))
    write_csv(path, frame)


def problems_message(prog: str, error, problems_file: Path | None, shown: int = 25) -> str:
    """The text a user reads for a ManifestError: every problem, or the first ``shown`` and
    where the full list was written (``problems_file``)."""
    from fundusfm.data.manifest import format_problem

    problems = error.problems
    head = f"{prog}: dataset {error.dataset!r}: {len(problems)} problem(s)"
    if problems_file is None:
        return "\n".join([head] + ["  " + format_problem(p) for p in problems])
    write_problems(problems_file, problems)
    lines = [head + f"; all of them are listed in {problems_file}"]
    lines += ["  " + format_problem(p) for p in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"  ... and {len(problems) - shown} more, in {problems_file}")
    return "\n".join(lines)


def ingest_main(argv: list[str] | None = None) -> int:
    """``fundusfm ingest --name DS --config-json JSON --out manifest.csv [--report report.json]``."""
    from fundusfm.data.adapters import read_dataset
    from fundusfm.data.manifest import ManifestError

    p = argparse.ArgumentParser(prog="fundusfm ingest", description="turn a dataset as distributed into a manifest CSV")
    p.add_argument("--name", required=True, help="dataset name (the key under `datasets:` in the config)")
    p.add_argument("--config-json", required=True,
                   help="the dataset's config entry as JSON (adapter, root, options), or @file.json")
    p.add_argument("--out", required=True, type=Path, help="manifest CSV to write")
    p.add_argument("--report", type=Path, help="JSON report (unmapped labels, exclusions, unlabelled images)")
    p.add_argument("--problems", type=Path,
                   help="when ingest fails, write every problem here (CSV: file,row,column,value,message); "
                        "removed when ingest succeeds. Without it every problem is printed")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    _verbose(args.verbose)
    text = args.config_json
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        print(f"fundusfm ingest: --config-json is not valid JSON: {e}", file=sys.stderr)
        return 2
    try:
        df, report = read_dataset(args.name, cfg)
    except ManifestError as e:
        print(problems_message("fundusfm ingest", e, args.problems), file=sys.stderr)
        if args.report:  # (a workflow job's failed outputs are deleted: the problems file stays)
            failed = {"dataset": args.name, "status": "failed", "problems": e.problems}
            atomic_write(args.report, lambda t: t.write_text(json.dumps(failed, indent=2, default=str)))
        return 1
    except KeyError as e:
        print(f"fundusfm ingest: {e.args[0]}", file=sys.stderr)
        return 2
    if args.problems is not None and args.problems.exists():
        args.problems.unlink()  # from an earlier failed run: the dataset reads now
    write_csv(args.out, df)
    if args.report:
        atomic_write(args.report, lambda t: t.write_text(json.dumps(report, indent=2, default=str)))
    if report["unmapped"]:
        log.warning("%s: %d unmapped source labels left unknown: %s", args.name, len(report["unmapped"]),
                    ", ".join(sorted(report["unmapped_labels"])[:10]))
    if report["unlabelled_images"]:
        log.warning("%s: %d images on disk without a label (listed in the report)", args.name,
                    len(report["unlabelled_images"]))
    if report["excluded"]:
        log.warning("%s: %d images excluded (listed in the report)", args.name, len(report["excluded"]))
    log.info("wrote %s (%d images)", args.out, len(df))
    return 0


def _qc_arg(text: str) -> tuple[str, Path]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    name, path = text.split("=", 1)
    return name, Path(path)


def overlap_main(argv: list[str] | None = None) -> int:
    """``fundusfm overlap --qc DS=qc.csv ... --upstream DS... --evaluation DS... --out overlap.csv``."""
    from fundusfm.data.overlap import NEAR_DUPLICATE_BITS, exclusion_list, hash_qc_table, study_overlaps

    p = argparse.ArgumentParser(prog="fundusfm overlap",
                                description="images shared between upstream (pretraining) and evaluation datasets")
    p.add_argument("--qc", nargs="+", required=True, type=_qc_arg, metavar="NAME=QC_CSV",
                   help="preprocess QC table of each dataset (processed images are found next to it)")
    p.add_argument("--upstream", nargs="+", required=True, metavar="DS", help="datasets used for pretraining")
    p.add_argument("--evaluation", nargs="+", default=[], metavar="DS", help="downstream evaluation datasets")
    p.add_argument("--out", type=Path, help="pairs CSV (every near-duplicate pair and what was done)")
    p.add_argument("--exclude-out", type=Path, help="upstream images to leave out of pretraining (CSV)")
    p.add_argument("--task", nargs="+", default=[], metavar="NAME=DEV[,DEV...][:EXT[,EXT...]]",
                   help="a task's development and external datasets: their near-duplicates are listed too")
    p.add_argument("--keep-upstream-overlaps", action="store_true",
                   help="report upstream/evaluation pairs without excluding them (pretrain.exclude_overlaps false)")
    p.add_argument("--threshold", type=int, default=NEAR_DUPLICATE_BITS,
                   help=f"max Hamming distance of 64-bit pHashes (default {NEAR_DUPLICATE_BITS})")
    p.add_argument("--hash-size", type=int, default=8, help="pHash side; bits = side^2 (default 8)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.out is None and args.exclude_out is None:
        p.error("give --out, --exclude-out or both")
    _verbose(args.verbose)
    qc = dict(args.qc)
    tasks = {}
    for item in args.task:
        name, _, spec = item.partition("=")
        dev, _, ext = spec.partition(":")
        tasks[name] = {"datasets": [d for d in dev.split(",") if d], "external": [d for d in ext.split(",") if d]}
    if not tasks:  # no task structure given: every evaluation dataset is a development set of its own
        tasks = {d: {"datasets": [d], "external": []} for d in args.evaluation}
    used = {d for t in tasks.values() for d in t["datasets"] + t["external"]}
    missing = sorted({d for d in args.upstream + args.evaluation if d not in qc} | (used - set(qc)))
    if missing:
        print(f"fundusfm overlap: no --qc given for {missing}", file=sys.stderr)
        return 2
    try:
        hashes = pd.concat([hash_qc_table(n, path, args.hash_size) for n, path in qc.items()], ignore_index=True)
    except (FileNotFoundError, ValueError) as e:
        print(f"fundusfm overlap: {e}", file=sys.stderr)
        return 1
    extra = sorted(set(args.evaluation) - used)
    for d in extra:
        tasks[d] = {"datasets": [d], "external": []}
    pairs = study_overlaps(hashes, args.upstream, tasks, args.threshold,
                           exclude_from_pretraining=not args.keep_upstream_overlaps)
    if args.out:
        write_csv(args.out, pairs)
    if args.exclude_out:
        ex = exclusion_list(pairs) if not args.keep_upstream_overlaps else exclusion_list(pairs.iloc[0:0])
        write_csv(args.exclude_out, ex)
    n_cross = int((pairs["kind"] == "cross").sum())
    (log.warning if n_cross else log.info)(
        "%d upstream/evaluation pairs within %d bits, %d other near-duplicate pairs (%s); wrote %s",
        n_cross, args.threshold, len(pairs) - n_cross,
        ", ".join(f"{k}={v}" for k, v in pairs["kind"].value_counts().sort_index().items()),
        ", ".join(str(o) for o in (args.out, args.exclude_out) if o))
    return 0


def split_main(argv: list[str] | None = None) -> int:
    """``fundusfm split``: a task's image table with split-group (patient) grouped, leak-checked
    folds; near-duplicates merge split groups and leave the external sets."""
    from fundusfm.data.overlap import NEAR_DUPLICATE_BITS
    from fundusfm.data.task_table import build_task_table, parse_pairs

    p = argparse.ArgumentParser(prog="fundusfm split", description=split_main.__doc__)
    p.add_argument("--task-json", required=True, help="task definition (JSON)")
    p.add_argument("--manifest", nargs="+", required=True, metavar="DS=CSV")
    p.add_argument("--qc", nargs="+", required=True, metavar="DS=CSV")
    p.add_argument("--preprocessed", nargs="+", required=True, metavar="DS=DIR")
    p.add_argument("--exclude", help="CSV of dataset,image_id[,reason] to exclude (e.g. overlap report)")
    p.add_argument("--near-duplicate-bits", type=int, default=NEAR_DUPLICATE_BITS,
                   help=f"pHash distance up to which images are the same photograph [{NEAR_DUPLICATE_BITS}]")
    p.add_argument("--no-near-duplicates", action="store_true",
                   help="split groups from patient ids only (no image hashing)")
    p.add_argument("--dedup-against", nargs="+", default=[], metavar="DS=QC_CSV",
                   help="development datasets whose near-duplicates are excluded from the external set(s)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    task = json.loads(a.task_json)
    exclude = pd.read_csv(a.exclude, dtype=str) if a.exclude else None
    table = build_task_table(task, parse_pairs(a.manifest, "--manifest"), parse_pairs(a.qc, "--qc"),
                             parse_pairs(a.preprocessed, "--preprocessed"), exclude,
                             None if a.no_near_duplicates else a.near_duplicate_bits,
                             parse_pairs(a.dedup_against, "--dedup-against"))
    write_csv(a.out, table)
    for c in [c for c in table.columns if c.startswith("fold")]:
        counts = table[c].value_counts().to_dict()
        log.info("%s %s: %s", task["name"], c, ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return 0


def check_dataset_main(argv: list[str] | None = None) -> int:
    """``fundusfm check-dataset NAME --config my.yaml [--json out.json] [--strict]``."""
    from fundusfm import config as fcfg
    from fundusfm.data.check import check_dataset, format_text

    p = argparse.ArgumentParser(prog="fundusfm check-dataset",
                                description="check a dataset before a study: images listed / found / missing / "
                                            "unlisted, patients, labels, unknown values, id collisions, splits")
    p.add_argument("name", help="dataset name (a key under `datasets:` in the config)")
    p.add_argument("--config", required=True, type=Path, help="the study config (the file given to --configfile)")
    p.add_argument("--json", help="also write the result as JSON to this file (`-`: print JSON instead of text)")
    p.add_argument("--strict", action="store_true", help="warnings fail too (exit 1)")
    args = p.parse_args(argv)
    logging.getLogger("fundusfm").setLevel(logging.WARNING)  # the result says it all; logging is set up by the dispatcher
    logging.getLogger("fundusfm.data.adapters").setLevel(logging.ERROR)  # the result says it all
    try:
        config = fcfg.load(args.config)
    except (fcfg.ConfigError, OSError) as e:
        print(f"fundusfm check-dataset: {e}", file=sys.stderr)
        return 2
    datasets = config.get("datasets") or {}
    if args.name not in datasets:
        print(f"fundusfm check-dataset: no dataset {args.name!r} in {args.config}; its datasets: "
              f"{', '.join(sorted(datasets))}", file=sys.stderr)
        return 2
    result = check_dataset(args.name, datasets[args.name], config)
    if args.json == "-":
        print(json.dumps(result, indent=2, default=str))
    else:
        print(format_text(result))
        if args.json:
            atomic_write(Path(args.json), lambda t: t.write_text(json.dumps(result, indent=2, default=str)))
    return 1 if result["errors"] or (args.strict and result["warnings"]) else 0

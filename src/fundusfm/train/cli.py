"""``fundusfm train`` (pretrain or fine-tune a timm backbone on a task table) and
``fundusfm infer`` (predict an external set with a trained model)."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

from fundusfm.jsonargs import load_json_arg

log = logging.getLogger("fundusfm.train")


def _json_arg(text: str) -> dict:
    """A JSON object given inline or as a path to a .json file (argparse type)."""
    try:
        return load_json_arg(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fundusfm train", description=__doc__)
    p.add_argument("--table", required=True, help="task table CSV (results/splits/<task>.csv)")
    p.add_argument("--fold", type=int, default=0, help="fold K: roles from column fold<K>")
    p.add_argument("--fraction", type=float, default=1.0, help="label fraction of the training rows (0, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task-json", required=True, type=_json_arg, help="task definition (JSON or .json file)")
    p.add_argument("--init", required=True, help="random | imagenet | checkpoint:<path>")
    p.add_argument("--init-name", default=None, help="name of the init recorded in model.json (e.g. imagenet+fundus)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow unpickling a whole pickled model (the paper's release); runs code from the file")
    p.add_argument("--allow-partial", action="store_true", help="accept a checkpoint that matches partly beyond the head")
    p.add_argument("--checkpoint-format", default="auto",
                   help="key layout of a checkpoint: init (docs/checkpoint-formats.md) [auto: detected from the keys]")
    p.add_argument("--key-map-json", type=_json_arg, default={},
                   help="checkpoint key prefix -> new prefix ('' strips, null drops), applied before the format")
    p.add_argument("--hparams-json", type=_json_arg, default={}, help="hyper-parameters (JSON or .json file)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--external", nargs="*", default=[], help="external datasets to predict")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: 0 on CPU, up to 8 per GPU)")
    p.add_argument("--gpus", type=int, default=1,
                   help="GPUs of this job: 0 trains on the CPU whatever the machine has; >1 relaunches itself "
                        "under torchrun with DDP (gloo on --device cpu)")
    return p


def _launch_torchrun(argv: list[str], nproc: int) -> int:
    """Re-run this command under torchrun with ``nproc`` processes (one per GPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "fundusfm.cli", "train", *argv]
    log.info("launching DDP: %s", " ".join(cmd))
    return subprocess.call(cmd)


def train_main(argv: list[str] | None = None) -> int:
    """Entry point of ``fundusfm train``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.gpus < 0:
        print(f"fundusfm train: --gpus must be >= 0, got {args.gpus}", file=sys.stderr)
        return 2
    if args.gpus == 0:
        # the job was given no GPU (Snakemake resources gpu=0): never touch one
        if args.device == "cuda":
            print("fundusfm train: --device cuda with --gpus 0; give the job a GPU or drop --device", file=sys.stderr)
            return 2
        args.device = "cpu"
    if args.gpus > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(argv, args.gpus)

    from fundusfm.task import TaskSpec
    from fundusfm.train.config import resolve_hparams
    from fundusfm.train.engine import EXIT_PREEMPTED, Preempted, RunSpec, train

    try:
        task = TaskSpec.from_dict(args.task_json)
        hparams = resolve_hparams(args.hparams_json)
    except ValueError as exc:
        print(f"fundusfm train: {exc}", file=sys.stderr)
        return 2
    spec = RunSpec(table=args.table, fold=args.fold, fraction=args.fraction, seed=args.seed, task=task,
                   init=args.init, hparams=hparams, out=args.out, init_name=args.init_name,
                   trust_pickle=args.trust_pickle, allow_partial=args.allow_partial,
                   checkpoint_format=args.checkpoint_format, key_map=dict(args.key_map_json),
                   external=list(args.external), device=args.device, workers=args.workers)
    from safetensors import SafetensorError

    from fundusfm.errors import error_line
    from fundusfm.models.init import InitError
    from fundusfm.train.resume import ResumeError

    try:
        train(spec)
    except Preempted as exc:
        log.warning("%s; resume state in %s/.resume, rerun to continue", exc, args.out)
        return EXIT_PREEMPTED
    except (InitError, ResumeError, FileNotFoundError, SafetensorError, ValueError) as exc:
        print(f"fundusfm train: {error_line(exc)}", file=sys.stderr)
        return 1
    return 0



def infer_main(argv: list[str] | None = None) -> int:
    """``fundusfm infer``: predict one external dataset of a task table with a trained model."""
    p = argparse.ArgumentParser(prog="fundusfm infer", description=infer_main.__doc__)
    p.add_argument("--model-dir", required=True, help="training output (model.safetensors, model.json)")
    p.add_argument("--table", required=True, help="task table results/splits/<task>.csv")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--dataset", required=True, help="external dataset (its rows with role 'external')")
    p.add_argument("--out", required=True, help="predictions CSV to write")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="[auto: cuda if present]")
    p.add_argument("--gpus", type=int, default=None, help="GPUs of this job (0 = CPU, whatever the machine has)")
    a = p.parse_args(argv)
    # no training engine here (its imports cost seconds per job): models + data code only
    import torch

    from fundusfm.fileio import write_csv
    from fundusfm.models.io import load_trained, resolve_device
    from fundusfm.task import TaskSpec, predictions_frame
    from fundusfm.train.sets import encode_targets, read_task_table
    from fundusfm.train.infer import predict_paths

    device = torch.device("cpu") if a.gpus == 0 else resolve_device(a.device)
    model, meta = load_trained(a.model_dir, device)
    task = TaskSpec.from_dict(meta["task"])
    df, col = read_task_table(a.table, a.fold)
    rows = df[(df[col] == "external") & (df["dataset"] == a.dataset)]
    if rows.empty:
        print(f"fundusfm infer: {a.table} has no external rows of dataset {a.dataset!r} in {col}", file=sys.stderr)
        return 1
    prob = predict_paths(model, meta, rows["image"].tolist(), a.batch_size, device)
    frame = predictions_frame(rows, encode_targets(rows, task, a.table), prob, task)
    write_csv(a.out, frame)
    log.info("%d predictions of %s on %s -> %s", len(frame), a.dataset, device, a.out)
    return 0

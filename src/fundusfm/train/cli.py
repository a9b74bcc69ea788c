"""``fundusfm train``: pretrain or fine-tune a timm backbone on a task table."""

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
    p.add_argument("--hparams-json", type=_json_arg, default={}, help="hyper-parameters (JSON or .json file)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--external", nargs="*", default=[], help="external datasets to predict")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: 0 on CPU, up to 8 per GPU)")
    p.add_argument("--gpus", type=int, default=1,
                   help="processes: >1 relaunches itself under torchrun with DDP (gloo on --device cpu)")
    return p


def _launch_torchrun(argv: list[str], nproc: int) -> int:
    """Re-run this command under torchrun with ``nproc`` processes (one per GPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "fundusfm.train.cli", *argv]
    log.info("launching DDP: %s", " ".join(cmd))
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fundusfm train``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    if args.gpus > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(argv, args.gpus)

    from fundusfm.train.config import TaskSpec, resolve_hparams
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
                   external=list(args.external), device=args.device, workers=args.workers)
    try:
        train(spec)
    except Preempted as exc:
        log.warning("%s; resume state in %s/.resume, rerun to continue", exc, args.out)
        return EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())

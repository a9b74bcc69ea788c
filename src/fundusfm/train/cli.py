"""``fundusfm train`` (pretrain or fine-tune a timm backbone on a task table),
``fundusfm infer`` (predict an external set with a trained model or a linear probe),
``fundusfm embed`` (frozen features), ``fundusfm linear-probe`` (logistic regression on
them) and ``fundusfm model-facts`` (parameters, input, throughput of an init's model)."""

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


def _job_device(verb: str, gpus: int | None, device: str):
    """The torch device of a job: ``--gpus 0`` is the CPU whatever the machine has, else
    ``--device`` (auto: CUDA when present). Raises ValueError on a contradiction."""
    import torch

    from fundusfm.models.io import resolve_device

    if gpus is not None and gpus < 0:
        raise ValueError(f"--gpus must be >= 0, got {gpus}")
    if gpus == 0:
        if device == "cuda":
            raise ValueError("--device cuda with --gpus 0; give the job a GPU or drop --device")
        return torch.device("cpu")
    if gpus is not None and gpus > 1:
        log.info("%s uses one GPU (asked for %d)", verb, gpus)
    return resolve_device(device)


def infer_main(argv: list[str] | None = None) -> int:
    """``fundusfm infer``: predict one external dataset of a task table with a trained model,
    or, when ``--model-dir`` is a linear-probe run (it holds probe.json), with its saved
    probe from the external images' cached features (``--features``; no refit)."""
    p = argparse.ArgumentParser(prog="fundusfm infer", description=infer_main.__doc__)
    p.add_argument("--model-dir", required=True, help="training output (model.safetensors, model.json) or linear-probe "
                                                      "run (probe.json)")
    p.add_argument("--table", required=True, help="task table results/splits/<task>.csv")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--dataset", required=True, help="external dataset (its rows with role 'external')")
    p.add_argument("--out", required=True, help="predictions CSV to write")
    p.add_argument("--features", default=None,
                   help="feature file of the external images (fundusfm embed); required for a linear-probe run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="[auto: cuda if present]")
    p.add_argument("--gpus", type=int, default=None, help="GPUs of this job (0 = CPU, whatever the machine has)")
    a = p.parse_args(argv)
    from fundusfm.fileio import write_csv
    from fundusfm.task import TaskSpec, predictions_frame
    from fundusfm.train.linear import is_probe_dir
    from fundusfm.train.sets import encode_targets, read_task_table

    linear = is_probe_dir(a.model_dir)
    if linear and not a.features:
        print(f"fundusfm infer: {a.model_dir} is a linear-probe run (probe.json): give the external images' "
              "features with --features EXT.parquet (fundusfm embed)", file=sys.stderr)
        return 2
    df, col = read_task_table(a.table, a.fold)
    rows = df[(df[col] == "external") & (df["dataset"] == a.dataset)]
    if rows.empty:
        print(f"fundusfm infer: {a.table} has no external rows of dataset {a.dataset!r} in {col}", file=sys.stderr)
        return 1
    if linear:
        # no torch here: the probe is a standardisation and a linear model (fundusfm.train.linear)
        import json
        from pathlib import Path

        from fundusfm.train.features import FeaturesError
        from fundusfm.train.linear import ProbeError, predict_rows

        try:
            meta = json.loads((Path(a.model_dir) / "model.json").read_text())
            prob = predict_rows(a.model_dir, rows, a.features, what=f"{a.table} (external {a.dataset}, {col})")
        except (FeaturesError, ProbeError, FileNotFoundError) as exc:
            print(f"fundusfm infer: {exc}", file=sys.stderr)
            return 1
        except json.JSONDecodeError as exc:
            print(f"fundusfm infer: {Path(a.model_dir) / 'model.json'}: not valid JSON ({exc})", file=sys.stderr)
            return 1
        where = "probe"
    else:
        # no training engine here (its imports cost seconds per job): models + data code only
        import torch

        from fundusfm.models.io import load_trained, resolve_device
        from fundusfm.train.infer import predict_paths

        device = torch.device("cpu") if a.gpus == 0 else resolve_device(a.device)
        model, meta = load_trained(a.model_dir, device)
        from fundusfm.train.data import image_digests

        prob = predict_paths(model, meta, rows["image"].tolist(), a.batch_size, device, digests=image_digests(rows))
        where = str(device)
    task = TaskSpec.from_dict(meta["task"])
    frame = predictions_frame(rows, encode_targets(rows, task, a.table), prob, task)
    write_csv(a.out, frame)
    log.info("%d predictions of %s (%s) -> %s", len(frame), a.dataset, where, a.out)
    return 0


def embed_main(argv: list[str] | None = None) -> int:
    """``fundusfm embed``: frozen pooled backbone features as a Parquet file.

    Workflow mode: ``--table CSV --init SPEC --task-json T --hparams-json H ...`` embeds
    every used image of a task table with an init's model, built as a fine-tune builds it.
    User mode: ``--model DIR IMAGES...`` embeds image files and folders with a training
    output (processed images) or a release folder (raw photographs, preprocessed as the
    release's study did). See docs/linear-probe.md."""
    p = argparse.ArgumentParser(prog="fundusfm embed", description=embed_main.__doc__)
    p.add_argument("images", nargs="*", help="user mode: image files or folders (jpg, jpeg, png, tif; recursive)")
    p.add_argument("--model", default=None, help="user mode: training output folder or release folder")
    p.add_argument("--table", default=None, help="workflow mode: task table whose images to embed")
    p.add_argument("--part", default=None,
                   help="workflow mode: which rows: all (default: every row some fold uses) | dev | external_<dataset>")
    p.add_argument("--init", default=None, help="workflow mode: random | imagenet | checkpoint:<path>")
    p.add_argument("--init-name", default=None, help="name of the init recorded in the file (e.g. retfound)")
    p.add_argument("--hparams-json", type=_json_arg, default={}, help="hyper-parameters: the model definition")
    p.add_argument("--task-json", type=_json_arg, default=None, help="task definition (its number of outputs)")
    p.add_argument("--checkpoint-format", default="auto", help="key layout of a checkpoint init [auto]")
    p.add_argument("--key-map-json", type=_json_arg, default={}, help="checkpoint key prefix -> new prefix")
    p.add_argument("--trust-pickle", action="store_true", help="allow unpickling a whole pickled model")
    p.add_argument("--allow-partial", action="store_true", help="accept a checkpoint that matches partly")
    p.add_argument("--seed", type=int, default=0, help="seeds the random initialisation (init random)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="image loader processes [0]")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--gpus", type=int, default=None, help="GPUs of this job (0 = CPU whatever the machine has)")
    p.add_argument("--out", required=True, help="feature file to write (.parquet)")
    a = p.parse_args(argv)
    if (a.model is None) == (a.table is None):
        print("fundusfm embed: give either --model DIR IMAGES... (user mode) or --table CSV --init SPEC ... "
              "(workflow mode)", file=sys.stderr)
        return 2
    if a.table is not None and (a.init is None or a.task_json is None or a.images):
        print("fundusfm embed: workflow mode (--table) needs --init and --task-json and takes no IMAGES",
              file=sys.stderr)
        return 2
    if a.model is not None and not a.images:
        print("fundusfm embed: --model needs IMAGES (files or folders) to embed", file=sys.stderr)
        return 2
    if a.batch_size < 1:
        print(f"fundusfm embed: --batch-size must be >= 1, got {a.batch_size}", file=sys.stderr)
        return 2
    from safetensors import SafetensorError

    from fundusfm.errors import error_line
    from fundusfm.models.init import InitError
    from fundusfm.task import TaskSpec
    from fundusfm.train.config import resolve_hparams
    from fundusfm.train.embed import embed_model, embed_table

    try:
        device = _job_device("embed", a.gpus, a.device)
        if a.table is not None:
            task = TaskSpec.from_dict(a.task_json)
            hp = resolve_hparams(a.hparams_json)
            meta = embed_table(a.table, a.out, init=a.init, hp=hp, num_outputs=task.num_outputs,
                               init_name=a.init_name, seed=a.seed, batch_size=a.batch_size, device=device,
                               workers=a.workers, part=a.part, trust_pickle=a.trust_pickle,
                               allow_partial=a.allow_partial, checkpoint_format=a.checkpoint_format,
                               key_map=dict(a.key_map_json))
        else:
            meta = embed_model(a.model, a.images, a.out, batch_size=a.batch_size, device=device, workers=a.workers)
    except (InitError, FileNotFoundError, SafetensorError, ValueError, RuntimeError, OSError) as exc:
        print(f"fundusfm embed: {error_line(exc)}", file=sys.stderr)
        return 1
    log.info("%d images x %d features (%s) -> %s", meta["n_images"], meta["feature_dim"], meta["model"]["arch"], a.out)
    return 0


def _c_values(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--c-values: comma-separated numbers, got {text!r}") from None
    if not vals or any(not v > 0 for v in vals):
        raise argparse.ArgumentTypeError(f"--c-values: positive numbers, got {text!r}")
    return vals


def linear_probe_main(argv: list[str] | None = None) -> int:
    """``fundusfm linear-probe``: logistic regression on cached frozen features, C chosen on
    validation, on the rows a fine-tune of the same fold/fraction/seed uses
    (docs/linear-probe.md)."""
    from fundusfm.train.linear import DEFAULT_C_VALUES

    p = argparse.ArgumentParser(prog="fundusfm linear-probe", description=linear_probe_main.__doc__)
    p.add_argument("--table", required=True, help="task table CSV (results/splits/<task>.csv)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--fraction", type=float, default=1.0, help="label fraction (0, 1], as fine-tuning")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task-json", required=True, type=_json_arg, help="task definition (JSON or .json file)")
    p.add_argument("--hparams-json", type=_json_arg, default={},
                   help="the run's hyper-parameters (monitor, val_labels, val_min_patients are used)")
    p.add_argument("--features", required=True, help="feature file of the development images (fundusfm embed)")
    p.add_argument("--c-values", type=_c_values, default=list(DEFAULT_C_VALUES),
                   help=f"inverse regularisation strengths to sweep [{','.join(f'{c:g}' for c in DEFAULT_C_VALUES)}]")
    p.add_argument("--max-iter", type=int, default=1000, help="lbfgs iterations per fit [1000]")
    p.add_argument("--init-name", default=None, help="name of the init recorded in model.json")
    p.add_argument("--out", required=True, help="output directory")
    a = p.parse_args(argv)
    from fundusfm.task import TaskSpec
    from fundusfm.train.config import resolve_hparams
    from fundusfm.train.linear import ProbeSpec, run_probe

    try:
        spec = ProbeSpec(table=a.table, fold=a.fold, fraction=a.fraction, seed=a.seed,
                         task=TaskSpec.from_dict(a.task_json), hparams=resolve_hparams(a.hparams_json),
                         features=a.features, out=a.out, c_values=a.c_values, max_iter=a.max_iter,
                         init_name=a.init_name)
        run_probe(spec)
    except (FileNotFoundError, ValueError) as exc:
        print(f"fundusfm linear-probe: {exc}", file=sys.stderr)
        return 1
    return 0


def model_facts_main(argv: list[str] | None = None) -> int:
    """``fundusfm model-facts``: architecture, input, parameter counts, feature width and
    inference throughput (on this job's device) of an init's model; no checkpoint needed."""
    p = argparse.ArgumentParser(prog="fundusfm model-facts", description=model_facts_main.__doc__)
    p.add_argument("--init-name", required=True)
    p.add_argument("--hparams-json", type=_json_arg, default={}, help="hyper-parameters: the model definition")
    p.add_argument("--task-json", required=True, type=_json_arg, help="task definition (its number of outputs)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs of this job (0 = CPU whatever the machine has)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch-size", type=int, default=16, help="throughput batch [16]")
    p.add_argument("--seconds", type=float, default=2.0, help="timed throughput budget after a warm-up batch [2]")
    p.add_argument("--out", required=True, help="JSON file to write")
    a = p.parse_args(argv)
    from fundusfm.fileio import write_json
    from fundusfm.task import TaskSpec
    from fundusfm.train.config import resolve_hparams
    from fundusfm.train.facts import model_facts

    try:
        device = _job_device("model-facts", a.gpus, a.device)
        task = TaskSpec.from_dict(a.task_json)
        facts = model_facts(resolve_hparams(a.hparams_json), task.num_outputs, device, init_name=a.init_name,
                            batch_size=a.batch_size, seconds=a.seconds)
    except (ValueError, RuntimeError) as exc:
        print(f"fundusfm model-facts: {exc}", file=sys.stderr)
        return 1
    write_json(a.out, facts)
    log.info("%s: %s, %d parameters (%d backbone), %d features, %.1f images/s on %s", a.init_name, facts["arch"],
             facts["params_total"], facts["params_backbone"], facts["feature_dim"],
             facts["throughput"]["images_per_s"], facts["throughput"]["device_name"])
    return 0

"""``fundusfm`` command line: one verb per workflow stage.

Every verb's entry point is ``fundusfm.<package>.cli:<verb>_main(argv) -> int`` (a dash in
the verb becomes ``_``). Verbs are imported lazily so that ``fundusfm synth`` does not pay
for importing torch. Logging is configured here, once, for every verb.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys

# verb -> (package whose cli module holds <verb>_main, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "draw a synthetic fundus dataset (images + labels CSV)"),
    "check-dataset": ("data", "check a dataset before a study (images, ids, labels, splits)"),
    "ingest": ("data", "turn a dataset as distributed into a manifest CSV"),
    "preprocess": ("preprocess", "FOV crop, resize, normalise and quality-check images"),
    "split": ("data", "patient-grouped splits of a task (leak-checked)"),
    "overlap": ("data", "duplicate / overlap check across datasets"),
    "train": ("train", "pretrain or fine-tune a timm backbone"),
    "infer": ("train", "predict an external dataset with a trained model or a linear probe"),
    "embed": ("train", "frozen backbone features of images (Parquet) for linear probes"),
    "linear-probe": ("train", "logistic regression on frozen features, C chosen on validation"),
    "model-facts": ("train", "parameters, input size and throughput of an init's model"),
    "evaluate": ("evaluate", "metrics with CIs from a predictions CSV"),
    "table": ("evaluate", "study table of a task (CSV, Markdown, LaTeX)"),
    "figures": ("evaluate", "ROC/PR, label-efficiency and other figures"),
    "protocol": ("evaluate", "the study's protocol card (report front page)"),
    "summary": ("evaluate", "compact metrics JSON + CSV of all study tables (DVC)"),
    "cam": ("evaluate", "activation-map galleries of a trained model"),
    "sync-mlflow": ("tracking", "mirror result files into MLflow (idempotent)"),
    "register": ("tracking", "register a release in the MLflow model registry"),
    "export": ("release", "export a trained model as a release"),
    "predict": ("release", "predict on new photographs with a release"),
    "keygen": ("release", "an Ed25519 key pair to sign releases (export --sign-key, predict --trusted-key)"),
    "check-results": ("audit", "verify a results tree against its recorded digests (what Snakemake cannot see)"),
}

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def entry_point(verb: str):
    """The function behind a verb: ``fundusfm.<package>.cli.<verb>_main``."""
    package, _ = VERBS[verb]
    module = importlib.import_module(f"fundusfm.{package}.cli")
    return getattr(module, f"{verb.replace('-', '_')}_main")


def configure_logging() -> None:
    """One format for every verb; under torchrun only rank 0 logs below WARNING."""
    rank = int(os.environ.get("RANK", "0"))
    fmt = LOG_FORMAT if "WORLD_SIZE" not in os.environ else LOG_FORMAT.replace("%(levelname)s", f"[rank {rank}] %(levelname)s")
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=fmt)


def _terminate(signum, frame):  # noqa: ARG001
    # SIGTERM (Snakemake cancelling a job, a cluster's scancel) as an exception, so that
    # `finally` blocks run: no half-written temporary files stay behind (fundusfm.fileio)
    raise SystemExit(128 + signum)


def _usage() -> str:
    lines = ["usage: fundusfm VERB [options]   (fundusfm VERB --help for details)", "", "verbs:"]
    for verb, (_, text) in VERBS.items():
        lines.append(f"  {verb:<12} {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] == "--version":
        from fundusfm import __version__

        print(__version__)
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"fundusfm: unknown verb {verb!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    configure_logging()
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(entry_point(verb)(rest) or 0)
    except BaseException as exc:  # noqa: BLE001 - only the errors below become one line
        line = one_line_error(exc)
        if line is None:
            raise
        print(f"fundusfm {verb}: {line}", file=sys.stderr)
        return 1


def one_line_error(exc: BaseException) -> str | None:
    """What a verb prints, as one line, for an error that is the user's or the machine's
    to fix rather than a bug: a storage refusal (disk full, quota, read-only folder,
    permission: :data:`fundusfm.fileio.STORAGE_ERRNOS`, with the path), a file not found,
    and fundusfm's own errors (messages that name the file, row and key). ``None``: let
    it raise (a traceback is what a bug report needs)."""
    from fundusfm.errors import error_line
    from fundusfm.fileio import storage_error

    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        return None
    err = storage_error(exc, writing=False)
    if err is not None:
        return str(err)
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename or ''}: file not found" if exc.filename else error_line(exc)
    if type(exc).__module__.startswith("fundusfm."):
        return error_line(exc)
    return None


if __name__ == "__main__":
    sys.exit(main())

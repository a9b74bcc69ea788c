"""``fundusfm`` command line: one verb per workflow stage.

Verbs are imported lazily so that ``fundusfm synth`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
import sys

# verb -> (module, function, one-line help)
VERBS: dict[str, tuple[str, str, str]] = {
    "synth": ("fundusfm.synth.cli", "main", "draw a synthetic fundus dataset (images + labels CSV)"),
    "ingest": ("fundusfm.data.cli", "ingest_main", "turn a dataset as distributed into a manifest CSV"),
    "preprocess": ("fundusfm.preprocess.cli", "main", "FOV crop, resize, normalise and quality-check images"),
    "split": ("fundusfm.data.split_cli", "main", "patient-grouped splits of a task (leak-checked)"),
    "overlap": ("fundusfm.data.cli", "overlap_main", "duplicate / overlap check across datasets"),
    "train": ("fundusfm.train.cli", "main", "pretrain or fine-tune a timm backbone"),
    "infer": ("fundusfm.train.infer", "main", "predict an external dataset with a trained model"),
    "evaluate": ("fundusfm.evaluate.cli", "evaluate_main", "metrics with CIs from a predictions CSV"),
    "table": ("fundusfm.evaluate.cli", "table_main", "study table of a task (CSV, Markdown, LaTeX)"),
    "figures": ("fundusfm.evaluate.cli", "figures_main", "ROC/PR, label-efficiency and other figures"),
    "summary": ("fundusfm.evaluate.cli", "summary_main", "compact metrics JSON + CSV of all study tables (DVC)"),
    "cam": ("fundusfm.evaluate.cli", "cam_main", "activation-map galleries of a trained model"),
    "sync-mlflow": ("fundusfm.tracking", "sync_main", "mirror result files into MLflow (idempotent)"),
    "export": ("fundusfm.release", "export_main", "export a trained model as a release"),
    "predict": ("fundusfm.release", "predict_main", "predict on new photographs with a release"),
}


def _usage() -> str:
    lines = ["usage: fundusfm VERB [options]   (fundusfm VERB --help for details)", "", "verbs:"]
    for verb, (_, _, text) in VERBS.items():
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
    module, func, _ = VERBS[verb]
    fn = getattr(importlib.import_module(module), func)
    return int(fn(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

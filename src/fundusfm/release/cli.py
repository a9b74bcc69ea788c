"""``fundusfm export`` and ``fundusfm predict``: the release verbs."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("fundusfm.release")


def _default_run_dir(results: Path) -> Path:
    """The study's foundation model among the finished pretrainings, by the workflow's
    rule (:func:`fundusfm.layout.foundation_source`)."""
    from fundusfm import layout
    from fundusfm.release.loading import ReleaseError

    done = [p.parent.name for p in sorted((results / layout.PRETRAIN).glob("*/model.json"))]
    if not set(done) & {"imagenet", "random"}:
        raise ReleaseError(f"no finished pretraining under {results / layout.PRETRAIN} (imagenet or random); "
                           "pass --run-dir DIR")
    return Path(layout.pretrain_dir(results, layout.foundation_source(done)))


def export_main(argv: list[str] | None = None) -> int:
    """``fundusfm export``: write a release folder (weights, config, model card) of a trained model
    (register it in MLflow with ``fundusfm register``)."""
    from fundusfm.release.export import DEFAULT_LICENCE, export
    from fundusfm.release.loading import ReleaseError

    p = argparse.ArgumentParser(prog="fundusfm export", description=export_main.__doc__)
    p.add_argument("--run-dir", help="training output to release (default: the study's foundation model, "
                                     "<results>/pretrain/imagenet, else <results>/pretrain/random)")
    p.add_argument("--results", default=None, help="results folder of the study (default: results, or "
                                                   "inferred from the task table's image paths)")
    p.add_argument("--out", default=None, help="release folder (default: <results>/release)")
    p.add_argument("--tables", nargs="*", default=None,
                   help="study tables for the model card (default: <results>/tables/*.csv)")
    p.add_argument("--preprocess-spec", help="preprocess_spec.json to use when it cannot be found next to the "
                                              "processed images of the task table")
    p.add_argument("--licence", default=DEFAULT_LICENCE, help=f"licence of the weights [{DEFAULT_LICENCE}]")
    p.add_argument("--study", default=None, help="study name (MLflow experiment; model card)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for the test-set CIs [200]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sign-key", default=None, metavar="KEY",
                   help="Ed25519 private key (PEM or OpenSSH; fundusfm keygen) that signs the release; without it the "
                        "release is 'integrity only, unsigned'")
    a = p.parse_args(argv)
    results = Path(a.results or "results")
    out = Path(a.out) if a.out else results / "release"
    try:
        run_dir = Path(a.run_dir) if a.run_dir else _default_run_dir(results)
        # <task>.csv are the study tables; <task>_comparisons.csv etc. are not
        tables = a.tables if a.tables is not None else sorted(
            str(t) for t in (results / "tables").glob("*.csv") if "_" not in t.stem or
            (results / "tables" / f"{t.stem}.md").is_file())
        export(run_dir, out, results=a.results, tables=tables, licence=a.licence, study=a.study,
               preprocess_spec=a.preprocess_spec, n_boot=a.n_boot, seed=a.seed, sign_key=a.sign_key)
    except (ReleaseError, ValueError, KeyError) as e:
        print(f"fundusfm export: {e}", file=sys.stderr)
        return 1
    return 0


def predict_main(argv: list[str] | None = None) -> int:
    """``fundusfm predict``: probabilities, predicted label, quality status and FOV per input image."""
    p = argparse.ArgumentParser(prog="fundusfm predict", description=predict_main.__doc__)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, or CSV files listing images")
    p.add_argument("--model", required=True, help="release folder (fundusfm export)")
    p.add_argument("--out", required=True, help="predictions CSV to write (one row per input)")
    p.add_argument("--cam", default=None, metavar="DIR", help="write activation-map overlays of ok images here")
    p.add_argument("--cam-method", default="gradcam", help="gradcam | gradcampp | ... [gradcam]")
    p.add_argument("--path-column", default=None, help="column of image paths in CSV inputs [path/image/file]")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="[auto: cuda if present]")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=1, help="preprocessing processes [1]")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                   help="public key (file or folder of *.pub/*.pem) of an author you trust: the release must carry "
                        "a valid Ed25519 signature by one of them (repeatable; $FUNDUSFM_TRUSTED_KEYS adds more)")
    a = p.parse_args(argv)
    import torch
    from safetensors import SafetensorError

    from fundusfm.errors import error_line
    from fundusfm.release.loading import ReleaseError
    from fundusfm.release.predict import InputError

    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        return _predict(a)
    except (InputError, ReleaseError, FileNotFoundError, SafetensorError, ValueError, RuntimeError) as e:
        # RuntimeError: torch's (a CUDA device asked for and absent) and InitError
        print(f"fundusfm predict: {error_line(e)}", file=sys.stderr)
        return 1


def _predict(a) -> int:
    from fundusfm.fileio import write_csv
    from fundusfm.release.loading import load_model
    from fundusfm.release.predict import expand_inputs, predict_inputs

    paths = expand_inputs(a.inputs, a.path_column)
    # every release check happens here, before any image is read
    released = load_model(a.model, device=a.device, trusted_keys=a.trusted_key)
    print(f"fundusfm predict (release {a.model}): {released.authenticity}", file=sys.stderr)
    if not paths:
        print("fundusfm predict: the inputs hold no files", file=sys.stderr)
        return 1
    log.info("%d input(s); model %s on %s", len(paths), a.model, released.device)
    df = predict_inputs(released, paths, batch_size=a.batch_size, workers=a.workers, cam_dir=a.cam,
                        cam_method=a.cam_method, progress=not a.no_progress)
    out = write_csv(a.out, df)
    counts = df["status"].value_counts().to_dict()
    log.info("%d rows: %d ok, %d rejected, %d error -> %s", len(df), counts.get("ok", 0), counts.get("rejected", 0),
             counts.get("error", 0), out)
    return 0


def keygen_main(argv: list[str] | None = None) -> int:
    """``fundusfm keygen``: a new Ed25519 key pair to sign releases with (``--out NAME``
    writes NAME.pem, private, mode 0600, and NAME.pub, public: give the .pub to users)."""
    from fundusfm.release import signing

    p = argparse.ArgumentParser(prog="fundusfm keygen", description=keygen_main.__doc__)
    p.add_argument("--out", required=True, help="path and name of the pair, without suffix")
    a = p.parse_args(argv)
    try:
        priv, pub = signing.generate(a.out)
    except signing.SigningKeyError as e:
        print(f"fundusfm keygen: {e}", file=sys.stderr)
        return 1
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    print(f"private key {priv} (keep it secret), public key {pub}: "
          f"{signing.key_id(load_pem_public_key(pub.read_bytes()))}")
    return 0

"""The results tree: where each training job's folder and metrics live, built and parsed
in one place (the rules use :data:`RUN` through ``rules/common.smk``).

::

    <results>/pretrain/<source>/                                          a pretraining job
    <results>/finetune/<task>/<init>/<adaptation>/fold<k>/frac<f>/seed<s>/  a downstream job (RUN)
    <results>/metrics/<task>/<init>/<adaptation>/fold<k>/frac<f>/seed<s>/<set>.json
    <results>/features/<task>/<init>/<part>.parquet     frozen features (part: dev | external_<ds>)
    <results>/models/<task>/<init>.json                 the init's model facts (params, size, speed)
    <results>/conversions/<sha256>.safetensors          trusted pickles converted (keyed by the source's bytes)

A downstream job adapts an init to a task in one of :data:`ADAPTATIONS`: ``finetune``
(the whole network trained) or ``linear`` (a logistic regression on the frozen
features, :mod:`fundusfm.train.linear`).

A job's *key* is its folder relative to the results folder (``pretrain/random``,
``finetune/<RUN>``): MLflow runs are identified by it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

PRETRAIN = "pretrain"
FINETUNE = "finetune"
METRICS = "metrics"

FEATURES = "features"
MODELS = "models"
CONVERSIONS = "conversions"
# how an init is adapted to a task: the whole network trained, or a linear probe on its
# frozen features (the first is the default of every task)
ADAPTATIONS = ("finetune", "linear")

# One downstream job's folder below <results>/finetune (and its metrics folder below
# <results>/metrics). The field names are the rules' wildcards.
RUN = "{task}/{init}/{adaptation}/fold{fold}/frac{fraction}/seed{seed}"



def run_pattern(adaptation: str) -> str:
    """:data:`RUN` with the adaptation fixed: the output pattern of the rule that makes
    that adaptation's runs (``finetune`` or ``linear``)."""
    if adaptation not in ADAPTATIONS:
        raise ValueError(f"unknown adaptation {adaptation!r} (one of {ADAPTATIONS})")
    return RUN.replace("{adaptation}", adaptation)


_FINETUNE_KEY = re.compile(
    r"^finetune/(?P<task>[^/]+)/(?P<init>[^/]+)/(?P<adaptation>" + "|".join(ADAPTATIONS) + r")"
    r"/fold(?P<fold>\d+)/frac(?P<fraction>[^/]+)/seed(?P<seed>\d+)$"
)
_PRETRAIN_KEY = re.compile(r"^pretrain/(?P<source>[^/]+)$")


def fmt_fraction(f: float | str) -> str:
    """Label-fraction as it appears in paths (``0.1``, ``1``)."""
    return f"{float(f):g}"


@dataclass(frozen=True)
class Run:
    """One downstream job of the study grid (``adaptation``: one of :data:`ADAPTATIONS`)."""

    task: str
    init: str
    fold: int
    fraction: str
    seed: int
    adaptation: str = "finetune"

    @property
    def path(self) -> str:
        """The job's folder below ``<results>/finetune`` (and ``<results>/metrics``)."""
        return RUN.format(task=self.task, init=self.init, adaptation=self.adaptation, fold=self.fold,
                          fraction=self.fraction, seed=self.seed)

    @property
    def key(self) -> str:
        return f"{FINETUNE}/{self.path}"


def pretrain_key(source: str) -> str:
    return f"{PRETRAIN}/{source}"


def finetune_dir(results: str | os.PathLike, run: Run) -> str:
    return f"{results}/{FINETUNE}/{run.path}"


def pretrain_dir(results: str | os.PathLike, source: str) -> str:
    return f"{results}/{PRETRAIN}/{source}"


def metrics_json(results: str | os.PathLike, run: Run, evalset: str) -> str:
    return f"{results}/{METRICS}/{run.path}/{evalset}.json"


def features_file(results: str | os.PathLike, task: str, init: str, part: str) -> str:
    """Frozen features of an init over a task's images: ``part`` is ``dev`` (the task's
    development table) or ``external_<dataset>`` (one external table)."""
    return f"{results}/{FEATURES}/{task}/{init}/{part}.parquet"


def model_facts_json(results: str | os.PathLike, task: str, init: str) -> str:
    """An init's model facts for a task: parameters, input size, throughput."""
    return f"{results}/{MODELS}/{task}/{init}.json"


def parse_key(key: str) -> dict:
    """What a job's key says: ``kind`` (``finetune``/``pretrain``), task, init, fold,
    fraction (and adaptation and seed for downstream jobs). Raises ValueError for anything else."""
    m = _FINETUNE_KEY.match(key)
    if m:
        d = m.groupdict()
        return {"kind": FINETUNE, "task": d["task"], "init": d["init"], "adaptation": d["adaptation"],
                "fold": int(d["fold"]), "fraction": d["fraction"], "seed": int(d["seed"])}
    m = _PRETRAIN_KEY.match(key)
    if m:
        return {"kind": PRETRAIN, "task": PRETRAIN, "init": m["source"], "fold": 0, "fraction": "1"}
    raise ValueError(f"not a run key: {key!r}")


def is_key(key: str) -> bool:
    return bool(_FINETUNE_KEY.match(key) or _PRETRAIN_KEY.match(key))


def run_key(run_dir: str | os.PathLike) -> tuple[str, Path]:
    """``(key, results_dir)`` of a training folder: the key is its path from the last
    ``finetune``/``pretrain`` component on (e.g. ``finetune/t/random/fold0/frac1/seed0``)."""
    parts = Path(os.path.abspath(run_dir)).parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in (FINETUNE, PRETRAIN):
            key = "/".join(parts[i:])
            if is_key(key):
                return key, Path(*parts[:i])
    raise ValueError(
        f"{run_dir}: not a training folder (expected .../finetune/{RUN} "
        f"or .../pretrain/<source>, see docs/architecture.md)"
    )


def conversions_dir_of(out_dir: str | os.PathLike) -> Path | None:
    """``<results>/conversions`` of a job folder in a results tree (a training folder, or
    a folder below ``<results>/features``); ``None`` for a folder elsewhere (conversions
    are then not cached)."""
    try:
        return run_key(out_dir)[1] / CONVERSIONS
    except ValueError:
        pass
    parts = Path(os.path.abspath(out_dir)).parts
    if FEATURES in parts:
        return Path(*parts[:len(parts) - 1 - parts[::-1].index(FEATURES)]) / CONVERSIONS
    return None


def metrics_dir_of_key(results: str | os.PathLike, key: str) -> Path | None:
    """The metrics folder of a fine-tuning job (pretraining has none)."""
    if not _FINETUNE_KEY.match(key):
        return None
    return Path(results) / METRICS / key.split("/", 1)[1]


def find_run_dirs(results_dir: str | os.PathLike) -> list[Path]:
    """Finished training folders under ``<results>/pretrain`` and ``<results>/finetune``
    (a folder counts once its ``model.json`` is there: outputs appear only when a job
    finished)."""
    results = Path(results_dir)
    pattern = RUN.format(task="*", init="*", adaptation="*", fold="*", fraction="*", seed="*")
    found = []
    for meta in sorted((results / PRETRAIN).glob("*/model.json")) + sorted(
        (results / FINETUNE).glob(f"{pattern}/model.json")
    ):
        if is_key(meta.parent.relative_to(results).as_posix()):
            found.append(meta.parent)
    return found


def foundation_source(sources) -> str:
    """Which pretraining is the study's foundation model: ImageNet-initialised when the
    study has it (the paper's best), else the randomly initialised one."""
    return "imagenet" if "imagenet" in set(sources) else "random"


def released_run(runs: list[Run]) -> Run:
    """The fine-tuning job released for a task and init: the largest label fraction,
    then the first fold and seed (a linear probe is not a network: never released)."""
    tuned = [r for r in runs if r.adaptation == "finetune"]
    if not tuned:
        raise ValueError("no fine-tuning run to release (linear probes are not released)")
    return sorted(tuned, key=lambda r: (-float(r.fraction), r.fold, r.seed))[0]

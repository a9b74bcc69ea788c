"""The study configuration: schema validation, cross-checks and the run grid.

The Snakemake workflow (rules/common.smk) and the tests use the same functions, so a
config error reads the same wherever it is found, before any job runs.
"""

from __future__ import annotations

import itertools
import json
import os
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from fundusfm import layout
from fundusfm.layout import Run, fmt_fraction

# Shipped inside the package, so an installed (not editable) fundusfm validates configs.
SCHEMA = "schemas/config.schema.yaml"

# Inits that come from our own pretraining, and the pretraining source each needs.
PRETRAINED_INITS = {"fundus": "random", "imagenet+fundus": "imagenet"}
BUILTIN_INITS = {"random", "imagenet", *PRETRAINED_INITS}
# an init's own model definition: these keys of `inits.<name>` replace the task's hparams
MODEL_KEYS = ("arch", "img_size", "head", "model_args", "mean", "std")
# inverse regularisation strengths of the linear probe's sweep (chosen on validation)
LINEAR_PROBE_C = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and what to do."""


def schema() -> dict:
    """The config's JSON schema (``fundusfm/schemas/config.schema.yaml``)."""
    return yaml.safe_load(resources.files("fundusfm").joinpath(SCHEMA).read_text())


def _path(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "(top level)"


def _message(err: jsonschema.ValidationError) -> str:
    """The schema's message, in words where its own would be cryptic."""
    if list(err.absolute_path) == ["inits"] and err.validator == "not":
        return (f"{err.instance!r} names a built-in init ({', '.join(sorted(BUILTIN_INITS))}) or an adaptation "
                "(finetune, linear); give the checkpoint another name")
    return err.message


def validate(config: dict, source: str = "config") -> dict:
    """Validate against the JSON schema, fill defaults, then cross-check references.

    Raises ConfigError listing every problem with its key path.
    """
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  - {_path(e)}: {_message(e)}" for e in errors]
        raise ConfigError(f"{source} is invalid ({len(errors)} problem(s)):\n" + "\n".join(lines))
    _fill_defaults(config)
    problems = list(_cross_check(config))
    if problems:
        raise ConfigError(f"{source} is invalid ({len(problems)} problem(s)):\n" + "\n".join(f"  - {p}" for p in problems))
    return config


def _fill_defaults(config: dict) -> None:
    """Every default of the config, in one place (the schema carries none): after
    validation, code reads keys directly, never with a fallback of its own."""
    config.setdefault("seed", 0)
    config.setdefault("data_dir", "data")
    config.setdefault("results_dir", "results")
    config.setdefault("inits", {})
    for entry in config["inits"].values():
        entry.setdefault("format", "auto")
        entry.setdefault("trust_pickle", False)
        entry.setdefault("allow_partial", False)
        entry.setdefault("key_map", {})
        entry.setdefault("recipe", {})
    probe = config.setdefault("linear_probe", {})
    probe.setdefault("c_values", list(LINEAR_PROBE_C))
    probe.setdefault("max_iter", 1000)
    probe.setdefault("batch_size", 64)
    config.setdefault("report", {})
    config["report"].setdefault("cam", True)
    config["report"].setdefault("n_boot", 1000)
    mlflow = config.setdefault("mlflow", {})
    mlflow.setdefault("enabled", True)
    mlflow.setdefault("log_each_job", True)
    mlflow.setdefault("log_model", False)
    config.setdefault("release", {}).setdefault("licence", "CC-BY-NC-4.0")
    pp = config["preprocess"]
    for k, v in {"size": 512, "normalise": "none", "format": "jpg", "max_reject_fraction": 0.2,
                 "monochrome": "reject", "alpha": "flatten", "max_decode_pixels": 40_000_000}.items():
        pp.setdefault(k, v)
    pt = config["pretrain"]
    pt.setdefault("split", {"strategy": "holdout"})
    pt.setdefault("seed", config["seed"])
    pt.setdefault("exclude_overlaps", True)
    pt.setdefault("hparams", {})
    pt.setdefault("also_in_tasks", [])
    for name, ds in config["datasets"].items():
        if "synth" in ds:
            ds.setdefault("root", f"{config['data_dir']}/{name}")
    for task in config["tasks"].values():
        task.setdefault("external", [])
        task.setdefault("split", {"strategy": "kfold", "folds": 5})
        task.setdefault("hparams", {})
        task.setdefault("adaptations", ["finetune"])
        task.setdefault("compare_to", task["inits"][0] if "random" not in task["inits"] else "random")


def _cross_check(config: dict):
    datasets = config["datasets"]
    from fundusfm.data.adapters import option_problems

    for name, ds in datasets.items():
        for problem in option_problems(name, ds):
            yield f"{problem['column']}: {problem['message']}"
        if "root" not in ds and ds["adapter"] not in {"manifest"}:
            yield f"datasets.{name}.root: missing (the folder of the dataset as distributed)"
        if "synth" in ds and ds["adapter"] != "synth":
            yield f"datasets.{name}: a 'synth' block needs adapter: synth (got {ds['adapter']!r})"
    for ds in config["pretrain"]["datasets"]:
        if ds not in datasets:
            yield f"pretrain.datasets: unknown dataset {ds!r} (known: {', '.join(sorted(datasets))})"
    pretrain = set(config["pretrain"]["datasets"])
    allowed = set(config["pretrain"]["also_in_tasks"])
    for ds in sorted(allowed - pretrain):
        yield f"pretrain.also_in_tasks: {ds!r} is not a pretraining dataset (pretrain.datasets: {sorted(pretrain)})"
    named = set(config["inits"])
    for name, entry in config["inits"].items():
        if ("mean" in entry) != ("std" in entry):
            given, other = ("mean", "std") if "mean" in entry else ("std", "mean")
            yield (f"inits.{name}: {given} without {other}; give both (the missing one would silently be "
                   f"the architecture's default)")
        for key in sorted(set(entry["recipe"]) & set(MODEL_KEYS)):
            yield (f"inits.{name}.recipe.{key}: the model definition is a key of the init itself "
                   f"(inits.{name}.{key}), not of its recipe")
        from fundusfm.train.config import DEFAULT_HPARAMS

        for key in sorted(set(entry["recipe"]) - set(DEFAULT_HPARAMS)):
            yield f"inits.{name}.recipe.{key}: unknown hyper-parameter (known: {', '.join(sorted(DEFAULT_HPARAMS))})"
    if config["pretrain"]["datasets"] and pretrain_sources(config):
        from fundusfm.train.config import resolve_hparams

        try:  # the pretraining's hyper-parameters, checked now like every task's
            resolve_hparams(hparams(config, "pretrain"))
        except ValueError as exc:
            yield f"train / pretrain.hparams: {exc}"
    for tname, task in config["tasks"].items():
        for key in ("datasets", "external"):
            for ds in task[key]:
                if ds not in datasets:
                    yield f"tasks.{tname}.{key}: unknown dataset {ds!r} (known: {', '.join(sorted(datasets))})"
        for key in ("datasets", "external"):
            for ds in task.get(key, []):
                if ds in pretrain and ds not in allowed:
                    yield (
                        f"tasks.{tname}.{key} and pretrain.datasets both use dataset {ds!r}: its images would be "
                        f"pretrained on and then evaluated. Use separate datasets, or list {ds!r} under "
                        "pretrain.also_in_tasks if you know why (the report then says so)"
                    )
        both = set(task["datasets"]) & set(task["external"])
        if both:
            yield f"tasks.{tname}: {sorted(both)} both a development and an external dataset"
        for init in task["inits"]:
            if init not in BUILTIN_INITS and init not in named:
                yield (
                    f"tasks.{tname}.inits: unknown init {init!r}; use one of {sorted(BUILTIN_INITS)} "
                    f"or name a checkpoint under the top-level 'inits:' key"
                )
                continue
            from fundusfm.train.config import resolve_hparams

            try:  # the hyper-parameters each init's runs will train with, checked now
                resolve_hparams(hparams(config, tname, init))
            except ValueError as exc:
                where = f"inits.{init}.recipe / " if init in named else ""
                yield f"{where}train / tasks.{tname}.hparams (runs of init {init!r}): {exc}"
        if task["compare_to"] not in task["inits"]:
            yield f"tasks.{tname}.compare_to: {task['compare_to']!r} is not one of the task's inits"
        folds = split_folds(task)
        for k in task.get("run_folds", []):
            if k >= folds:
                yield f"tasks.{tname}.run_folds: fold {k} does not exist (the split has {folds} fold(s))"
        if task["type"] == "binary" and len(task["classes"]) != 2:
            yield f"tasks.{tname}.classes: a binary task has exactly 2 classes, got {task['classes']}"
        labels = [fmt_fraction(f) for f in task["fractions"]]
        if len(set(labels)) != len(labels):  # 0.1 and 0.1000001 share the path frac0.1
            yield f"tasks.{tname}.fractions: repeated values {task['fractions']} (as run paths: {labels})"
    release = config["release"]
    if "task" in release:
        task = config["tasks"].get(release["task"])
        if task is None:
            yield f"release.task: unknown task {release['task']!r} (known: {', '.join(sorted(config['tasks']))})"
        elif "init" in release and release["init"] not in task["inits"]:
            yield (f"release.init: task {release['task']!r} has no init {release['init']!r} "
                   f"(its inits: {task['inits']})")
    elif "init" in release:
        yield "release.init: needs release.task (the released model is then that task's fine-tune)"


def duplicate_keys(text: str, source: str = "config") -> list[str]:
    """Keys given twice in one mapping of a YAML (or JSON) document, as messages naming
    the key path and both lines. YAML loaders keep the last value silently (a task
    replaced, ``epochs: 6`` then ``epochs: 60``); the study refuses them instead."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({e})") from None
    found: list[str] = []

    def walk(node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                if name is not None and name != "<<":
                    where = f"{path}.{name}" if path else str(name)
                    if name in first:
                        found.append(f"{source}: key {where!r} is given twice (lines {first[name] + 1} and "
                                     f"{key.start_mark.line + 1}); YAML would keep the last silently, remove one")
                    else:
                        first[name] = key.start_mark.line
                    walk(value, where)
                else:
                    walk(value, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{path}[{i}]")

    if root is not None:
        walk(root, "")
    return found


def check_config_files(paths) -> None:
    """Refuse config files with duplicate keys (the files Snakemake was given: it loads
    them itself, keeping the last of two values)."""
    problems = [msg for p in paths for msg in duplicate_keys(Path(p).read_text(), str(p))]
    if problems:
        raise ConfigError(f"duplicate key(s) in the config ({len(problems)} problem(s)):\n"
                          + "\n".join(f"  - {m}" for m in problems))


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML config file, refusing duplicate keys (:func:`duplicate_keys`)."""
    check_config_files([path])
    with open(path) as fh:
        return yaml.safe_load(fh)


def load(path: str | os.PathLike) -> dict:
    """Read and validate a config file."""
    return validate(read_yaml(path), source=str(path))


def put_cli_on_path(python: str) -> None:
    """Let rules find the ``fundusfm`` CLI installed next to the running interpreter
    (Snakemake started as ``.venv/bin/snakemake`` without an activated venv)."""
    bindir = os.path.dirname(python)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def local_gpu_count() -> int:
    """GPUs visible to this process, without importing torch (cheap at DAG build)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() not in ("", "-1")])
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


# ---------------------------------------------------------------------------- grid

def split_folds(task: dict) -> int:
    """Fold columns of a task's table (the split's own defaults: :class:`SplitSpec`)."""
    from fundusfm.data.splits import SplitSpec

    return SplitSpec.from_dict(task.get("split")).n_folds


def run_folds(task: dict) -> list[int]:
    return list(task.get("run_folds") or range(split_folds(task)))


def runs(config: dict, task: str | None = None, adaptation: str | None = None) -> list[Run]:
    """The downstream grid: task × init × adaptation × fold × fraction × seed (with
    ``adaptation``, only its runs).

    A linear probe on all the labels (fraction 1) has nothing random left: the frozen
    features are extracted once, the rows do not depend on the seed and the logistic
    regression is deterministic. Its other seeds would be exact copies counted as
    replicates (an interval narrower than the evidence), so it runs with the task's first
    seed only; under a label fraction the seed draws the labelled subset and every seed runs.
    """
    out = []
    for tname, t in config["tasks"].items():
        if task is not None and tname != task:
            continue
        for init, adapt, fold, frac, seed in itertools.product(
                t["inits"], t["adaptations"], run_folds(t), t["fractions"], t["seeds"]):
            if adaptation is not None and adapt != adaptation:
                continue
            if adapt == "linear" and float(frac) >= 1 and seed != t["seeds"][0]:
                continue
            out.append(Run(tname, init, fold, fmt_fraction(frac), seed, adapt))
    return out


def eval_sets(task: dict) -> list[str]:
    """Prediction sets evaluated for a task: the internal test set and each external set."""
    return ["test"] + [f"external_{ds}" for ds in task["external"]]


def feature_parts(task: dict) -> list[str]:
    """The feature files of a task's linear probes, per init: its development table, then
    one per external set (:func:`fundusfm.layout.features_file`)."""
    return ["dev"] + [f"external_{ds}" for ds in task["external"]]


def pretrain_sources(config: dict) -> list[str]:
    """Which pretrainings the configured inits need (``random`` and/or ``imagenet``)."""
    used = {i for t in config["tasks"].values() for i in t["inits"]}
    return sorted({PRETRAINED_INITS[i] for i in used if i in PRETRAINED_INITS})


def task_spec(config: dict, task: str, external: bool = True) -> dict:
    """The task definition passed to the CLI (JSON): labels, type, datasets, split.

    ``external=False`` leaves the external sets out: what training and the development
    split depend on, so adding an external set never retrains a task."""
    if task == "pretrain":
        pt = config["pretrain"]
        spec = dict(pt["task"], name="pretrain", datasets=list(pt["datasets"]), external=[], split=pt["split"])
        spec["split"] = dict({"seed": pt["seed"]}, **spec["split"])
        return spec
    t = config["tasks"][task]
    keys = ("type", "label", "classes", "labels", "datasets", "split") + (("external",) if external else ())
    return dict({k: t[k] for k in keys if k in t}, name=task)


def released_run_dir(config: dict) -> str:
    """The training output the release exports: the study's foundation model (see
    :func:`fundusfm.layout.foundation_source`), or with ``release.task`` that task's
    fine-tune of ``release.init`` (default: its last init) chosen by
    :func:`fundusfm.layout.released_run`."""
    results, release = config["results_dir"], config["release"]
    task = release.get("task")
    if not task:
        return layout.pretrain_dir(results, layout.foundation_source(pretrain_sources(config)))
    init = release.get("init") or config["tasks"][task]["inits"][-1]
    tuned = [r for r in runs(config, task, adaptation="finetune") if r.init == init]
    return layout.finetune_dir(results, layout.released_run(tuned))


def hparams(config: dict, task: str, init: str | None = None) -> dict:
    """Resolved hyper-parameters of a task's training jobs: ``train``, then the task's
    (or pretraining's) ``hparams``, then for a named ``init`` its ``recipe`` and its
    model definition (:data:`MODEL_KEYS`: arch, input size, head, normalisation), which
    no other level overrides."""
    own = config["pretrain"]["hparams"] if task == "pretrain" else config["tasks"][task]["hparams"]
    hp = {**config["train"], **own}
    entry = config["inits"].get(init) if init is not None else None
    if entry:
        hp.update(entry["recipe"])
        hp.update({k: entry[k] for k in MODEL_KEYS if k in entry})
    return hp


def model_definition(config: dict, task: str, init: str) -> dict:
    """The model an init's runs of a task use: arch, img_size, head, mean, std (``None``:
    the architecture's timm default), as :func:`hparams` resolves them."""
    from fundusfm.train.config import DEFAULT_HPARAMS

    hp = {**{k: DEFAULT_HPARAMS.get(k) for k in MODEL_KEYS}, **hparams(config, task, init)}
    return {k: hp.get(k) for k in MODEL_KEYS}


def recipe_overrides(config: dict, task: str, init: str) -> dict:
    """What an init's runs of a task train with beyond the task's own hyper-parameters
    (its recipe and model definition): the protocol card lists it, per init."""
    from fundusfm.train.config import DEFAULT_HPARAMS

    base = {**DEFAULT_HPARAMS, **hparams(config, task)}
    own = {**DEFAULT_HPARAMS, **hparams(config, task, init)}
    return {k: v for k, v in own.items() if base.get(k) != v}


def init_args(config: dict, init: str, results: str = "results") -> list[str]:
    """CLI arguments selecting an init for ``fundusfm train``."""
    if init in ("random", "imagenet"):
        return ["--init", init, "--init-name", init]
    if init in PRETRAINED_INITS:
        ckpt = f"{layout.pretrain_dir(results, PRETRAINED_INITS[init])}/model.safetensors"
        return ["--init", f"checkpoint:{ckpt}", "--init-name", init]
    entry = config["inits"][init]
    args = ["--init", f"checkpoint:{entry['checkpoint']}", "--init-name", init]
    if entry["format"] != "auto":
        args += ["--checkpoint-format", entry["format"]]
    if entry["key_map"]:
        args += ["--key-map-json", to_json(entry["key_map"])]
    if entry["trust_pickle"]:
        args.append("--trust-pickle")
    if entry["allow_partial"]:
        args.append("--allow-partial")
    return args


def to_json(obj) -> str:
    """Compact, key-sorted JSON (stable, so Snakemake's params trigger is exact)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))

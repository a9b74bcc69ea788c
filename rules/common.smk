# Config validation and the named input/param functions every rule uses.
import os
import re
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

from fundusfm import config as fcfg
from fundusfm import layout

# Snakemake read the config files itself (keeping the last of two equal keys): refuse those first.
fcfg.check_config_files(workflow.configfiles)
fcfg.validate(config, source="the Snakemake config")

# Rules call the `fundusfm` CLI installed next to the Python running Snakemake.
fcfg.put_cli_on_path(sys.executable)

# GPUs each training job asks for: 1 where the machine (or cluster profile) has GPUs.
GPUS_PER_JOB = int(config.get("gpus_per_job", 1 if fcfg.local_gpu_count() else 0))

R = config["results_dir"]
# One downstream job's folder below {R}/finetune and {R}/metrics, as wildcards
# (fundusfm.layout); the rule making each adaptation's runs fixes that part of it.
RUN = layout.RUN
RUN_FINETUNE = layout.run_pattern("finetune")
RUN_LINEAR = layout.run_pattern("linear")
DATASETS = sorted(config["datasets"])
TASKS = sorted(config["tasks"])
RUNS = fcfg.runs(config)
SOURCES = fcfg.pretrain_sources(config)
ALL_INITS = sorted({r.init for r in RUNS})


# Scheduling: when ready jobs compete for cores, the data stage and pretraining go
# first. Every fundus-initialised fine-tune waits for pretraining, which waits for the
# overlap check over every dataset; started late, that chain leaves cores idle at the
# end. Priorities only order ready jobs: they never change what runs.
PRIORITY_PRETRAIN_PATH = 10


def external_priority(wildcards):
    """Runs of tasks with external sets first (fine-tune, external predictions,
    evaluations): each of them has more work to follow, which then overlaps with the
    other tasks' fine-tunes instead of trailing at the end."""
    return len(config["tasks"][wildcards.task]["external"])


def half_the_cores(wildcards):
    """Threads of the long multi-core jobs (synth, preprocess, pretrain): half the cores
    Snakemake was given (2 when it is not told, as under a cluster executor). The
    one-thread jobs ready beside them (fine-tunes, evaluations) then keep the other half
    busy, and a job that wants every core never waits behind a stream of small ones
    (Snakemake does not hold cores back for it). Override with --set-threads RULE=N."""
    try:
        cores = workflow.cores
    except Exception:  # WorkflowError: no core count (cluster executors)
        cores = None
    return max(1, cores // 2) if isinstance(cores, int) else 2


def _alt(values):
    return "|".join(re.escape(str(v)) for v in values) or "NO_MATCH"


wildcard_constraints:
    dataset=_alt(DATASETS),
    task=_alt(TASKS + ["pretrain"]),
    init=_alt(ALL_INITS),
    source=_alt(["random", "imagenet"]),
    adaptation=_alt(layout.ADAPTATIONS),
    part=r"dev|external_[A-Za-z0-9_.-]+",
    fold=r"\d+",
    fraction=_alt(sorted({r.fraction for r in RUNS})),
    seed=r"\d+",
    evalset=r"test|external_[A-Za-z0-9_.-]+",


def q(obj):
    """Shell-quoted compact JSON of a config value (params, so edits re-trigger jobs)."""
    return shlex.quote(fcfg.to_json(obj))


def dataset_root(dataset):
    """The dataset's folder ('' for a `manifest` dataset, whose CSV names its images)."""
    return config["datasets"][dataset].get("root", "")


def dataset_inputs(wildcards):
    """Files ingest reads that another job may write, so that job runs first. A synthetic
    dataset's labels.csv (drawn by `synth`) or a `manifest` dataset's CSV (a user may write it).
    """
    from fundusfm.data.adapters.generic import manifest_csv_path

    ds = config["datasets"][wildcards.dataset]
    if "synth" in ds:
        return [f"{ds['root']}/labels.csv"]
    if ds["adapter"] == "manifest":
        return [str(manifest_csv_path(ds))]
    return []


def split_datasets(wildcards):
    """Datasets of a split table: the development sets of a task (or of pretraining),
    or the one external dataset of an external table."""
    if "dataset" in wildcards.keys():
        return [wildcards.dataset]
    return list(fcfg.task_spec(config, wildcards.task)["datasets"])


def split_spec(wildcards):
    spec = fcfg.task_spec(config, wildcards.task, external=False)
    if "dataset" in wildcards.keys():
        spec = dict(spec, datasets=[], external=[wildcards.dataset])
    return q(spec)


def split_inputs(wildcards):
    dss = split_datasets(wildcards)
    inputs = {
        "manifests": [f"{R}/manifests/{d}.csv" for d in dss],
        "qc": [f"{R}/preprocessed/{d}/qc.csv" for d in dss],
    }
    if (
        wildcards.task == "pretrain"
        and config["pretrain"]["exclude_overlaps"]
        and "dataset" not in wildcards.keys()
    ):
        inputs["exclude"] = f"{R}/overlap/exclude_from_pretraining.csv"
    if "dataset" in wildcards.keys():
        # an external set leaves out its near-duplicates of the task's development images
        inputs["dedup"] = [
            f"{R}/preprocessed/{d}/qc.csv"
            for d in config["tasks"][wildcards.task]["datasets"]
        ]
    return inputs


def split_args(wildcards, input):
    dss = split_datasets(wildcards)
    args = ["--manifest"] + [f"{d}={m}" for d, m in zip(dss, input.manifests)]
    args += ["--qc"] + [f"{d}={m}" for d, m in zip(dss, input.qc)]
    args += ["--preprocessed"] + [f"{d}={R}/preprocessed/{d}" for d in dss]
    if "exclude" in input.keys():
        args += ["--exclude", input.exclude]
    if "dedup" in input.keys():
        devs = config["tasks"][wildcards.task]["datasets"]
        args += ["--dedup-against"] + [f"{d}={q}" for d, q in zip(devs, input.dedup)]
    return " ".join(shlex.quote(a) for a in args)


def _missing_checkpoints():
    """Named inits whose checkpoint file is absent, as warning lines (once per dry run)."""
    return [
        f"  inits.{name}: {entry['checkpoint']} not found"
        + (f" (published: {entry['published']})" if entry.get("published") else "")
        for name, entry in sorted(config["inits"].items())
        if name in ALL_INITS and not os.path.isfile(entry["checkpoint"])
    ]


# a dry run (-n): known while the rules are read from the output settings (workflow.dryrun
# is set only later, with the executor)
DRY_RUN = bool(getattr(getattr(workflow, "output_settings", None), "dryrun", False))

MISSING_CHECKPOINTS = _missing_checkpoints() if DRY_RUN else []
if MISSING_CHECKPOINTS:
    # a dry run plans the study before the weights are fetched and lists what to fetch;
    # a real run refuses to start without them (MissingInputException)
    print(
        "fundusfm: planned without these init checkpoints; put them in place before running:\n"
        + "\n".join(MISSING_CHECKPOINTS),
        file=sys.stderr,
    )


def init_checkpoint(wildcards):
    """The weights a downstream job starts from: our own pretraining (it must finish first)
    or a checkpoint named under `inits:` (a missing file stops a real run before any job;
    a dry run plans without it and lists it)."""
    if wildcards.init in fcfg.PRETRAINED_INITS:
        source = fcfg.PRETRAINED_INITS[wildcards.init]
        return [f"{layout.pretrain_dir(R, source)}/model.safetensors"]
    if wildcards.init in config["inits"]:
        path = config["inits"][wildcards.init]["checkpoint"]
        return [] if DRY_RUN and not os.path.isfile(path) else [path]
    return []


def init_checkpoint_sha256(wildcards):
    """SHA-256 of a named init checkpoint, a parameter of its fine-tunes: new bytes at the
    path retrain them even when their time stamp is old (`cp -p`), which the mtime
    trigger misses. Empty while the file is missing (the missing input is reported)."""
    from fundusfm.hashing import sha256_file_memo

    path = init_checkpoint(wildcards)
    if wildcards.init not in config["inits"] or not path or not os.path.isfile(path[0]):
        return ""
    return sha256_file_memo(path[0])


def task_json(wildcards):
    """Task definition without external sets: what a training or evaluation job depends on."""
    return q(fcfg.task_spec(config, wildcards.task, external=False))


def init_cli(wildcards):
    return " ".join(shlex.quote(a) for a in fcfg.init_args(config, wildcards.init, R))


def run_hparams(wildcards):
    """Hyper-parameters of a task's runs of one init (train < task < the init's recipe and
    model definition)."""
    return q(fcfg.hparams(config, wildcards.task, wildcards.init))


def model_hparams(wildcards):
    """Only what an init's model is (architecture, head, input size, normalisation, the
    ImageNet weights file): feature extraction and model facts depend on nothing else, so
    a recipe edit (lr, epochs) never re-extracts features."""
    hp = fcfg.hparams(config, wildcards.task, wildcards.init)
    keys = fcfg.MODEL_KEYS + ("imagenet_weights",)
    return q({k: hp[k] for k in keys if k in hp})


def probe_hparams(wildcards):
    """What a linear probe reads of the hyper-parameters: the rows of its fold and fraction
    (val_labels, val_min_patients) and the validation metric choosing C. A fine-tuning
    recipe edit (lr, epochs) never refits the probes."""
    hp = fcfg.hparams(config, wildcards.task, wildcards.init)
    keys = ("monitor", "val_labels", "val_min_patients")
    return q({k: hp[k] for k in keys if k in hp})


def embed_table(wildcards):
    """The split table whose images a feature file covers: the task's development table
    (part `dev`) or one external table (part `external_<dataset>`)."""
    if wildcards.part == "dev":
        return f"{R}/splits/{wildcards.task}.csv"
    return f"{R}/splits/{wildcards.task}/{wildcards.part}.csv"


def linear_probe_cli(wildcards):
    lp = config["linear_probe"]
    args = ["--c-values", ",".join(f"{c:g}" for c in lp["c_values"])]
    args += ["--max-iter", str(lp["max_iter"])]
    return " ".join(shlex.quote(a) for a in args)


def task_model_facts(wildcards):
    """Model facts (parameters, input size, throughput) of each init of a task."""
    return [
        layout.model_facts_json(R, wildcards.task, i)
        for i in config["tasks"][wildcards.task]["inits"]
    ]


def task_metrics(wildcards):
    t = config["tasks"][wildcards.task]
    return [
        layout.metrics_json(R, r, s)
        for r in fcfg.runs(config, wildcards.task)
        for s in fcfg.eval_sets(t)
    ]


def task_test_metrics(wildcards):
    """Test metrics of a task's fine-tunes (the activation maps need a trained network)."""
    return [
        layout.metrics_json(R, r, "test")
        for r in fcfg.runs(config, wildcards.task, adaptation="finetune")
    ]


def eval_split_table(wildcards):
    """The split table of an evaluated set (its predictions hold exactly its images):
    the task table for the test set, an external set's own table for `external_<ds>`."""
    if wildcards.evalset.startswith("external_"):
        return f"{R}/splits/{wildcards.task}/{wildcards.evalset}.csv"
    return f"{R}/splits/{wildcards.task}.csv"


def task_split_tables(wildcards):
    """A task's split tables: development, then one per external set."""
    t = config["tasks"][wildcards.task]
    return [f"{R}/splits/{wildcards.task}.csv"] + [
        f"{R}/splits/{wildcards.task}/external_{d}.csv" for d in t["external"]
    ]


def protocol_json(wildcards):
    """The task's protocol facts from the resolved config (the card heads its table)."""
    from fundusfm.evaluate.protocol import config_facts

    return q(config_facts(config, wildcards.task))


def report_front_page():
    """The Snakemake report's front page: the generated protocol card once the study has
    run (``snakemake --report`` after the run), else the static workflow description."""
    card = Path(f"{R}/protocol/report_front.rst")
    return str(card) if card.is_file() else "workflow/report/workflow.rst"


def task_val_predictions(wildcards):
    """Validation predictions of a task's fine-tunes (the gallery model is chosen on them)."""
    return [
        f"{layout.finetune_dir(R, r)}/predictions_val.csv"
        for r in fcfg.runs(config, wildcards.task, adaptation="finetune")
    ]


def all_targets():
    targets = [f"{R}/tables/{t}.md" for t in TASKS] + [f"{R}/protocol/card.md"]
    targets += [f"{R}/figures/{t}" for t in TASKS]
    targets += [f"{R}/preprocessed/{d}/gallery.png" for d in DATASETS]
    if config["report"]["cam"]:
        # activation maps of a trained network: tasks with fine-tunes
        targets += [
            f"{R}/cam/{t}"
            for t in TASKS
            if "finetune" in config["tasks"][t]["adaptations"]
        ]
    return targets


def synth_cli(wildcards):
    s = config["datasets"][wildcards.dataset]["synth"]
    args = ["--patients", str(s["patients"]), "--seed", str(s["seed"])]
    if "prevalence" in s:
        args += [
            "--prevalence",
            ",".join(f"{k}={v}" for k, v in sorted(s["prevalence"].items())),
        ]
    for key, flag in (
        ("defect_rate", "--defect-rate"),
        ("non_fundus", "--non-fundus"),
        ("scale", "--scale"),
    ):
        if key in s:
            args += [flag, str(s[key])]
    return " ".join(shlex.quote(a) for a in args)


# ---- MLflow (rules/tracking.smk)


def mlflow_log_each_job(wildcards):
    """`true` when each training job logs itself to MLflow as it finishes (shell test)."""
    m = config["mlflow"]
    return "true" if m["enabled"] and m["log_each_job"] else "false"


def mlflow_uri_arg():
    """--tracking-uri from the config (MLFLOW_TRACKING_URI in the environment wins)."""
    uri = config["mlflow"].get("tracking_uri")
    return f"--tracking-uri {shlex.quote(uri)}" if uri else ""


def mlflow_experiment_input(wildcards):
    """Training jobs start after the experiment exists. ancient(): setting it up again
    (another tracking URI, say) never re-runs training."""
    return ancient(f"{R}/mlflow/experiment.json")


def mlflow_training_outputs(wildcards=None):
    """model.json of every training job (written last: the job finished)."""
    return [f"{layout.pretrain_dir(R, s)}/model.json" for s in SOURCES] + [
        f"{layout.finetune_dir(R, r)}/model.json" for r in RUNS
    ]


def mlflow_metrics(wildcards=None):
    """Every metrics JSON of the study (all tasks)."""
    return [m for t in TASKS for m in task_metrics(SimpleNamespace(task=t))]


def mlflow_config_json(wildcards):
    """The resolved study config (parent-run params, dataset lists, expected jobs)."""
    return q(config)


def mlflow_experiment_json(wildcards):
    """Only what the experiment itself depends on (study name, tracking settings): editing
    a task must not redo the experiment, whose output every training job reads; the full
    config reaches MLflow with the final sync."""
    return q({"study": config["study"], "mlflow": config["mlflow"]})


def mlflow_targets():
    return [f"{R}/mlflow/sync.json"] if config["mlflow"]["enabled"] else []


# ---- release (rules/release.smk)


def release_cli():
    args = [
        "--run-dir",
        fcfg.released_run_dir(config),
        "--results",
        R,
        "--out",
        f"{R}/release",
        "--licence",
        config["release"]["licence"],
        "--study",
        config["study"],
        "--n-boot",
        str(config["report"]["n_boot"]),
        "--seed",
        str(config["seed"]),
    ]
    if config["release"].get("sign_key"):
        args += ["--sign-key", config["release"]["sign_key"]]
    return " ".join(shlex.quote(a) for a in args)


def release_targets():
    targets = [f"{R}/release/config.json"]
    if config["mlflow"]["enabled"]:
        targets.append(f"{R}/mlflow/release.json")
    return targets


def results_dir(wildcards):
    """The results tree, for CLI options that take the whole tree (--results)."""
    return R


def ingest_entry(dataset):
    """The dataset's config entry as ingest reads it: without its `preprocess:` block, so
    tuning that dataset's preprocessing reruns preprocess, not ingest."""
    return {k: v for k, v in config["datasets"][dataset].items() if k != "preprocess"}


def preprocess_setting(dataset, key):
    """A preprocessing setting of one dataset: `datasets.<name>.preprocess.<key>` over the
    global `preprocess.<key>` (thresholds merge key by key). Per job, so changing one
    dataset's value reruns only that dataset's preprocess."""
    own = config["datasets"][dataset].get("preprocess") or {}
    base = config["preprocess"].get(key)
    if key == "thresholds":
        return {**(base or {}), **(own.get("thresholds") or {})}
    return own.get(key, base)


def ingest_inputs(wildcards):
    """What ingest reads that may change: dataset_inputs plus a `csv` dataset's labels file,
    so an edited sheet is read again."""
    ds = config["datasets"][wildcards.dataset]
    files = list(dataset_inputs(wildcards))
    given = ds.get("labels_file")
    if ds.get("adapter") == "csv" and given and ds.get("root"):
        path = given if os.path.isabs(given) else os.path.join(ds["root"], given)
        if os.path.isfile(path):
            files.append(path)
    return files


def overlap_qc_arg():
    return " ".join(f"{d}={R}/preprocessed/{d}/qc.csv" for d in DATASETS)


def overlap_evaluation_arg():
    """Datasets of any task that are not pretraining datasets."""
    used = {d for t in config["tasks"].values() for d in t["datasets"] + t["external"]}
    return " ".join(sorted(used - set(config["pretrain"]["datasets"])))


def overlap_keep_arg():
    return "" if config["pretrain"]["exclude_overlaps"] else "--keep-upstream-overlaps"

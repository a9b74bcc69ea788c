# Config validation and the named input/param functions every rule uses.
import shlex
import sys

from fundusfm import config as fcfg

fcfg.validate(config, source="the Snakemake config")

# Rules call the `fundusfm` CLI installed next to the Python running Snakemake.
fcfg.put_cli_on_path(sys.executable)

# GPUs each training job asks for: 1 where the machine (or cluster profile) has GPUs.
GPUS_PER_JOB = int(config.get("gpus_per_job", 1 if fcfg.local_gpu_count() else 0))

R = config["results_dir"]
DATASETS = sorted(config["datasets"])
TASKS = sorted(config["tasks"])
RUNS = fcfg.runs(config)
SOURCES = fcfg.pretrain_sources(config)
ALL_INITS = sorted({r.init for r in RUNS})


def _alt(values):
    return "|".join(re.escape(str(v)) for v in values) or "NO_MATCH"


wildcard_constraints:
    dataset=_alt(DATASETS),
    task=_alt(TASKS + ["pretrain"]),
    init=_alt(ALL_INITS),
    source=_alt(["random", "imagenet"]),
    fold=r"\d+",
    fraction=_alt(sorted({r.fraction for r in RUNS})),
    seed=r"\d+",
    evalset=r"test|external_[A-Za-z0-9_.-]+",


def q(obj):
    """Shell-quoted compact JSON of a config value (params, so edits re-trigger jobs)."""
    return shlex.quote(fcfg.to_json(obj))


def dataset_root(dataset):
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
    return inputs


def split_args(wildcards, input):
    dss = split_datasets(wildcards)
    args = ["--manifest"] + [f"{d}={m}" for d, m in zip(dss, input.manifests)]
    args += ["--qc"] + [f"{d}={m}" for d, m in zip(dss, input.qc)]
    args += ["--preprocessed"] + [f"{d}={R}/preprocessed/{d}" for d in dss]
    if "exclude" in input.keys():
        args += ["--exclude", input.exclude]
    return " ".join(shlex.quote(a) for a in args)


def init_checkpoint(wildcards):
    """Our own pretraining must finish before a fundus-initialised fine-tune starts."""
    if wildcards.init in fcfg.PRETRAINED_INITS:
        return [
            f"{R}/pretrain/{fcfg.PRETRAINED_INITS[wildcards.init]}/model.safetensors"
        ]
    return []


def task_json(wildcards):
    """Task definition without external sets: what a training or evaluation job depends on."""
    return q(fcfg.task_spec(config, wildcards.task, external=False))


def init_cli(wildcards):
    return " ".join(shlex.quote(a) for a in fcfg.init_args(config, wildcards.init, R))


def run_dirs(task):
    return [f"{R}/finetune/{r.path}" for r in fcfg.runs(config, task)]


def task_metrics(wildcards):
    t = config["tasks"][wildcards.task]
    return [
        f"{R}/metrics/{r.path}/{s}.json"
        for r in fcfg.runs(config, wildcards.task)
        for s in fcfg.eval_sets(t)
    ]


def task_test_metrics(wildcards):
    return [
        f"{R}/metrics/{r.path}/test.json" for r in fcfg.runs(config, wildcards.task)
    ]


def all_targets():
    targets = [f"{R}/tables/{t}.md" for t in TASKS]
    targets += [f"{R}/figures/{t}" for t in TASKS]
    targets += [f"{R}/preprocessed/{d}/gallery.png" for d in DATASETS]
    if config["report"]["cam"]:
        targets += [f"{R}/cam/{t}" for t in TASKS]
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

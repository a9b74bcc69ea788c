# Release: the study's foundation model (pretrain/imagenet when the study pretrains from
# ImageNet, the paper's best, else pretrain/random) -- or, with config release.task, that
# task's fine-tuned model -- exported as safetensors + config.json + model card into
# results/release/, then registered in the MLflow model registry (rule register_release;
# an unreachable store warns and never fails the study).


def release_run_dir():
    """Training output that is released (see the header of this file)."""
    rel = config.get("release", {})
    task = rel.get("task")
    if not task:
        return f"{R}/pretrain/{'imagenet' if 'imagenet' in SOURCES else 'random'}"
    if task not in config["tasks"]:
        raise ValueError(
            f"release.task: unknown task {task!r} (known: {', '.join(TASKS)})"
        )
    init = rel.get("init") or config["tasks"][task]["inits"][-1]
    runs = [r for r in fcfg.runs(config, task) if r.init == init]
    if not runs:
        raise ValueError(
            f"release.init: task {task!r} has no init {init!r} "
            f"(its inits: {config['tasks'][task]['inits']})"
        )
    # the largest label fraction, then the first fold and seed
    best = sorted(runs, key=lambda r: (-float(r.fraction), r.fold, r.seed))[0]
    return f"{R}/finetune/{best.path}"


def release_cli():
    rel = config.get("release", {})
    args = [
        "--run-dir",
        release_run_dir(),
        "--results",
        R,
        "--out",
        f"{R}/release",
        "--licence",
        rel.get("licence", "CC-BY-NC-4.0"),
        "--study",
        config.get("study", "fundusfm"),
        "--n-boot",
        str(config["report"]["n_boot"]),
        "--seed",
        str(config["seed"]),
    ]
    return " ".join(shlex.quote(a) for a in args)


def release_registry_uri():
    uri = config.get("mlflow", {}).get("tracking_uri")
    return f"--tracking-uri {shlex.quote(uri)}" if uri else ""


def release_targets():
    targets = [f"{R}/release/config.json"]
    if config.get("mlflow", {}).get("enabled", True):
        targets.append(f"{R}/mlflow/release.json")
    return targets


rule release:
    """Export the released model: weights, timm-style config with the preprocessing
    spec, and the model card with the study's metrics."""
    input:
        model=f"{release_run_dir()}/model.safetensors",
        meta=f"{release_run_dir()}/model.json",
        tables=[f"{R}/tables/{t}.csv" for t in TASKS],
        qc=[f"{R}/preprocessed/{d}/qc.csv" for d in DATASETS],
    output:
        weights=f"{R}/release/model.safetensors",
        config=f"{R}/release/config.json",
        card=report(
            f"{R}/release/README.md",
            category="Release",
        ),
    log:
        f"{R}/logs/release/export.log",
    benchmark:
        f"{R}/benchmarks/release/export.tsv"
    conda:
        "../envs/fundusfm.yaml"
    params:
        args=release_cli(),
    shell:
        "fundusfm export {params.args} --tables {input.tables} > {log} 2>&1"


rule register_release:
    """Register the release in the MLflow model registry with its study metrics."""
    input:
        config=f"{R}/release/config.json",
        weights=f"{R}/release/model.safetensors",
        card=f"{R}/release/README.md",
    output:
        f"{R}/mlflow/release.json",
    log:
        f"{R}/logs/release/register.log",
    conda:
        "../envs/fundusfm.yaml"
    params:
        uri=release_registry_uri(),
        study=shlex.quote(config.get("study", "fundusfm")),
    shell:
        "fundusfm export --register-only --out {R}/release --results {R} --study {params.study} "
        "{params.uri} --registry-json {output} > {log} 2>&1"

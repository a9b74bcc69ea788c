# Release: the study's foundation model (pretrain/imagenet when the study pretrains from
# ImageNet, the paper's best, else pretrain/random) -- or, with config release.task, that
# task's fine-tuned model -- exported as safetensors + config.json + model card into
# results/release/ (fundusfm.config.released_run_dir picks it), then registered in the
# MLflow model registry (rule register_release, after the final sync: both write the
# store; an unreachable server warns, a locked or broken store fails the job).


rule release:
    """Export the released model: weights, timm-style config with the preprocessing
    spec, and the model card with the study's metrics."""
    input:
        model=f"{fcfg.released_run_dir(config)}/model.safetensors",
        meta=f"{fcfg.released_run_dir(config)}/model.json",
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
        synced=f"{R}/mlflow/sync.json",
    output:
        f"{R}/mlflow/release.json",
    log:
        f"{R}/logs/release/register.log",
    conda:
        "../envs/fundusfm.yaml"
    params:
        uri=mlflow_uri_arg(),
        study=shlex.quote(config["study"]),
        results=results_dir,
    shell:
        "fundusfm register --release {params.results}/release --results {params.results} "
        "--study {params.study} {params.uri} --out {output} > {log} 2>&1"

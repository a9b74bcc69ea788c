# MLflow: a mirror of the result files (which stay the source of truth).
# The experiment and the study's parent run are created once, before any training job
# (so parallel jobs never race to create them); each training job logs itself as it
# finishes (rules/train.smk); a final sync logs everything from the result files and
# is idempotent. An unreachable tracking server never fails a job: the records say so
# and `fundusfm sync-mlflow` (or `snakemake -R sync_mlflow`) fills MLflow in later. A
# local SQLite store that is broken or stays locked fails the experiment and sync jobs
# (so Snakemake retries them), never a training job. Every first use of a SQLite store
# takes its file lock (<db>.lock), so parallel jobs meeting a new store never race
# through MLflow's schema migration (fundusfm.tracking.store).


rule mlflow_experiment:
    """Create the study's MLflow experiment and parent run once (written even when the
    store is unreachable, recording that)."""
    output:
        f"{R}/mlflow/experiment.json",
    log:
        f"{R}/logs/mlflow/experiment.log",
    priority: PRIORITY_PRETRAIN_PATH
    conda:
        "../envs/fundusfm.yaml"
    params:
        cfg=mlflow_experiment_json,
        uri=mlflow_uri_arg(),
        results=results_dir,
    shell:
        "fundusfm sync-mlflow --experiment-only --results {params.results} --config-json {params.cfg} "
        "{params.uri} --experiment-json {output} > {log} 2>&1"


rule sync_mlflow:
    """Mirror every training job, its per-epoch history, metrics and artifacts into
    MLflow from the result files (idempotent: a rerun creates no runs)."""
    input:
        experiment=f"{R}/mlflow/experiment.json",
        runs=mlflow_training_outputs,
        metrics=mlflow_metrics,
    output:
        f"{R}/mlflow/sync.json",
    log:
        f"{R}/logs/mlflow/sync.log",
    conda:
        "../envs/fundusfm.yaml"
    params:
        cfg=mlflow_config_json,
        uri=mlflow_uri_arg(),
        results=results_dir,
    shell:
        "fundusfm sync-mlflow --results {params.results} --config-json {params.cfg} {params.uri} "
        "--experiment-json {input.experiment} --summary {output} > {log} 2>&1"

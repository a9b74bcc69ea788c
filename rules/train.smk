# Training: upstream pretraining (normal vs abnormal) and the fine-tuning grid
# task × init × fold × label fraction × seed. GPU rules declare resources: gpu.


rule pretrain:
    """Pretrain the backbone on the upstream set, from random or ImageNet weights."""
    input:
        table=f"{R}/splits/pretrain.csv",
        mlflow=mlflow_experiment_input,
    output:
        model=f"{R}/pretrain/{{source}}/model.safetensors",
        meta=f"{R}/pretrain/{{source}}/model.json",
        history=f"{R}/pretrain/{{source}}/history.csv",
        train_config=f"{R}/pretrain/{{source}}/train_config.json",
        val=f"{R}/pretrain/{{source}}/predictions_val.csv",
        test=f"{R}/pretrain/{{source}}/predictions_test.csv",
    log:
        f"{R}/logs/pretrain/{{source}}.log",
    priority: PRIORITY_PRETRAIN_PATH
    conda:
        "../envs/fundusfm.yaml"
    threads: half_the_cores
    resources:
        gpu=GPUS_PER_JOB,
    params:
        task=lambda wc: q(fcfg.task_spec(config, "pretrain")),
        hparams=lambda wc: q(fcfg.hparams(config, "pretrain")),
        seed=config["pretrain"]["seed"],
        out=lambda wc: f"{R}/pretrain/{wc.source}",
        results=results_dir,
        log_job=mlflow_log_each_job,
    shell:
        "OMP_NUM_THREADS={threads} fundusfm train --table {input.table} --fold 0 --fraction 1 "
        "--seed {params.seed} --task-json {params.task} --hparams-json {params.hparams} "
        "--init {wildcards.source} --init-name {wildcards.source} "
        "--gpus {resources.gpu} --out {params.out} > {log} 2>&1 "
        "&& if {params.log_job}; then fundusfm sync-mlflow --results {params.results} "
        "--experiment-json {input.mlflow} --run-dir {params.out} >> {log} 2>&1; fi"


rule finetune:
    """Fine-tune one run of the study grid; writes predictions for every evaluated set."""
    input:
        table=f"{R}/splits/{{task}}.csv",
        init=init_checkpoint,
        mlflow=mlflow_experiment_input,
    output:
        [
            f"{R}/finetune/{RUN}/{name}"
            for name in [
                "model.safetensors",
                "model.json",
                "history.csv",
                "train_config.json",
                "predictions_val.csv",
                "predictions_test.csv",
            ]
        ],
    log:
        f"{R}/logs/finetune/{RUN}.log",
    priority: external_priority
    conda:
        "../envs/fundusfm.yaml"
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
    params:
        task=task_json,
        hparams=lambda wc: q(fcfg.hparams(config, wc.task)),
        init=init_cli,
        init_sha256=init_checkpoint_sha256,
        out=f"{R}/finetune/{RUN}",
        results=results_dir,
        log_job=mlflow_log_each_job,
    shell:
        "OMP_NUM_THREADS={threads} fundusfm train --table {input.table} --fold {wildcards.fold} "
        "--fraction {wildcards.fraction} --seed {wildcards.seed} --task-json {params.task} "
        "--hparams-json {params.hparams} {params.init} "
        "--gpus {resources.gpu} --out {params.out} > {log} 2>&1 "
        "&& if {params.log_job}; then fundusfm sync-mlflow --results {params.results} "
        "--experiment-json {input.mlflow} --run-dir {params.out} >> {log} 2>&1; fi"


rule predict_external:
    """Predict an external evaluation set with a fine-tuned model (no retraining when
    an external set is added)."""
    input:
        table=f"{R}/splits/{{task}}/external_{{dataset}}.csv",
        model=f"{R}/finetune/{RUN}/model.safetensors",
    output:
        f"{R}/finetune/{RUN}/predictions_external_{{dataset}}.csv",
    log:
        f"{R}/logs/predict_external/{RUN}/{{dataset}}.log",
    priority: external_priority
    conda:
        "../envs/fundusfm.yaml"
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
    shell:
        "OMP_NUM_THREADS={threads} fundusfm infer --model-dir $(dirname {input.model}) "
        "--table {input.table} --fold {wildcards.fold} --dataset {wildcards.dataset} "
        "--gpus {resources.gpu} --out {output} > {log} 2>&1"

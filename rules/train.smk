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
            f"{R}/finetune/{RUN_FINETUNE}/{name}"
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
        f"{R}/logs/finetune/{RUN_FINETUNE}.log",
    priority: external_priority
    conda:
        "../envs/fundusfm.yaml"
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
    params:
        task=task_json,
        hparams=run_hparams,
        init=init_cli,
        init_sha256=init_checkpoint_sha256,
        out=f"{R}/finetune/{RUN_FINETUNE}",
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
        model=f"{R}/finetune/{RUN_FINETUNE}/model.safetensors",
    output:
        f"{R}/finetune/{RUN_FINETUNE}/predictions_external_{{dataset}}.csv",
    log:
        f"{R}/logs/predict_external/{RUN_FINETUNE}/{{dataset}}.log",
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


# ---- the linear adaptation: a logistic regression on frozen features (fundusfm.train.linear)


rule embed:
    """Frozen features of one init over a task's images, extracted once: the development
    table (part dev) or one external table; every linear probe of that init reads them.
    """
    input:
        table=embed_table,
        init=init_checkpoint,
    output:
        f"{R}/features/{{task}}/{{init}}/{{part}}.parquet",
    log:
        f"{R}/logs/embed/{{task}}/{{init}}/{{part}}.log",
    conda:
        "../envs/fundusfm.yaml"
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
    params:
        task=task_json,
        hparams=model_hparams,
        init=init_cli,
        init_sha256=init_checkpoint_sha256,
        seed=config["seed"],
        batch_size=config["linear_probe"]["batch_size"],
    shell:
        "OMP_NUM_THREADS={threads} fundusfm embed --table {input.table} --task-json {params.task} "
        "--hparams-json {params.hparams} {params.init} --seed {params.seed} "
        "--batch-size {params.batch_size} --gpus {resources.gpu} --out {output} > {log} 2>&1"


rule linear_probe:
    """Linear probe of one run of the grid: the same rows as the fine-tune of that fold,
    fraction and seed, a logistic regression on the frozen features, C chosen on validation.
    """
    input:
        table=f"{R}/splits/{{task}}.csv",
        features=f"{R}/features/{{task}}/{{init}}/dev.parquet",
    output:
        [
            f"{R}/finetune/{RUN_LINEAR}/{name}"
            for name in [
                "probe.json",
                "model.json",
                "history.csv",
                "train_config.json",
                "predictions_val.csv",
                "predictions_test.csv",
            ]
        ],
    log:
        f"{R}/logs/linear_probe/{RUN_LINEAR}.log",
    priority: external_priority
    conda:
        "../envs/fundusfm.yaml"
    threads: 1
    params:
        task=task_json,
        hparams=probe_hparams,
        probe=linear_probe_cli,
        out=f"{R}/finetune/{RUN_LINEAR}",
    shell:
        "OMP_NUM_THREADS={threads} fundusfm linear-probe --table {input.table} --fold {wildcards.fold} "
        "--fraction {wildcards.fraction} --seed {wildcards.seed} --task-json {params.task} "
        "--hparams-json {params.hparams} --features {input.features} {params.probe} "
        "--init-name {wildcards.init} --out {params.out} > {log} 2>&1"


rule predict_external_linear:
    """Predict an external set with a fitted linear probe (from that set's features)."""
    input:
        table=f"{R}/splits/{{task}}/external_{{dataset}}.csv",
        probe=f"{R}/finetune/{RUN_LINEAR}/probe.json",
        features=f"{R}/features/{{task}}/{{init}}/external_{{dataset}}.parquet",
    output:
        f"{R}/finetune/{RUN_LINEAR}/predictions_external_{{dataset}}.csv",
    log:
        f"{R}/logs/predict_external/{RUN_LINEAR}/{{dataset}}.log",
    priority: external_priority
    conda:
        "../envs/fundusfm.yaml"
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} fundusfm infer --model-dir $(dirname {input.probe}) "
        "--table {input.table} --fold {wildcards.fold} --dataset {wildcards.dataset} "
        "--features {input.features} --gpus 0 --out {output} > {log} 2>&1"


rule model_facts:
    """An init's model facts for a task's table: parameters, input size, feature width and
    inference throughput on the job's device (no weights needed)."""
    output:
        f"{R}/models/{{task}}/{{init}}.json",
    log:
        f"{R}/logs/model_facts/{{task}}/{{init}}.log",
    conda:
        "../envs/fundusfm.yaml"
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
    params:
        task=task_json,
        hparams=model_hparams,
    shell:
        "OMP_NUM_THREADS={threads} fundusfm model-facts --init-name {wildcards.init} "
        "--task-json {params.task} --hparams-json {params.hparams} --gpus {resources.gpu} "
        "--out {output} > {log} 2>&1"

# Evaluation: metrics with patient-level bootstrap CIs per run and set, then the
# study table (init × label fraction, aggregated over folds and seeds) per task.


rule evaluate:
    """Metrics of one run on one evaluated set, from its predictions file only."""
    input:
        pred=f"{R}/finetune/{RUN}/predictions_{{evalset}}.csv",
        val=f"{R}/finetune/{RUN}/predictions_val.csv",
        split=eval_split_table,
        table=f"{R}/splits/{{task}}.csv",
    output:
        f"{R}/metrics/{RUN}/{{evalset}}.json",
    log:
        f"{R}/logs/evaluate/{RUN}/{{evalset}}.log",
    priority: external_priority
    conda:
        "../envs/fundusfm.yaml"
    params:
        task=task_json,
        meta=lambda wc: q(
            dict(
                task=wc.task,
                init=wc.init,
                adaptation=wc.adaptation,
                fold=int(wc.fold),
                fraction=float(wc.fraction),
                seed=int(wc.seed),
                set=wc.evalset,
            )
        ),
        n_boot=config["report"]["n_boot"],
        seed=config["seed"],
    shell:
        "fundusfm evaluate --predictions {input.pred} --val-predictions {input.val} "
        "--split-table {input.split} --task-table {input.table} "
        "--task-json {params.task} --meta {params.meta} --n-boot {params.n_boot} "
        "--seed {params.seed} --out {output} > {log} 2>&1"


rule table:
    """The study table of a task: init × adaptation × fraction over folds and seeds, its
    models (parameters, input size, throughput) and its protocol card first."""
    input:
        metrics=task_metrics,
        splits=task_split_tables,
        overlap=f"{R}/overlap/overlap.csv",
        facts=task_model_facts,
    output:
        csv=f"{R}/tables/{{task}}.csv",
        protocol=f"{R}/tables/{{task}}_protocol.json",
        md=report(
            f"{R}/tables/{{task}}.md",
            caption="../workflow/report/table.rst",
            category="Study tables",
            subcategory="{task}",
        ),
        tex=f"{R}/tables/{{task}}.tex",
        comparisons=f"{R}/tables/{{task}}_comparisons.csv",
        models=f"{R}/tables/{{task}}_models.csv",
    log:
        f"{R}/logs/table/{{task}}.log",
    conda:
        "../envs/fundusfm.yaml"
    params:
        task=lambda wc: q(fcfg.task_spec(config, wc.task)),
        ref=lambda wc: config["tasks"][wc.task]["compare_to"],
        n_boot=config["report"]["n_boot"],
        seed=config["seed"],
        prefix=lambda wc: f"{R}/tables/{wc.task}",
        protocol=protocol_json,
    shell:
        "fundusfm table --task {wildcards.task} --task-json {params.task} --metrics {input.metrics} "
        "--compare-to {params.ref} --n-boot {params.n_boot} --seed {params.seed} "
        "--protocol-json {params.protocol} --split-tables {input.splits} --overlap {input.overlap} "
        "--model-facts {input.facts} "
        "--out-prefix {params.prefix} > {log} 2>&1"


rule protocol:
    """The study's protocol card, the front page of the Snakemake report."""
    input:
        cards=[f"{R}/tables/{t}_protocol.json" for t in TASKS],
        intro="workflow/report/workflow.rst",
    output:
        md=f"{R}/protocol/card.md",
        rst=f"{R}/protocol/report_front.rst",
    log:
        f"{R}/logs/protocol.log",
    conda:
        "../envs/fundusfm.yaml"
    shell:
        "fundusfm protocol --cards {input.cards} --intro {input.intro} --out-md {output.md} "
        "--out-rst {output.rst} > {log} 2>&1"


rule figures:
    """ROC/PR curves with inits overlaid, label efficiency, confusion, calibration, training curves."""
    input:
        task_metrics,
    output:
        report(
            directory(f"{R}/figures/{{task}}"),
            patterns=["{name}.png"],
            caption="../workflow/report/figures.rst",
            category="Figures",
            subcategory="{task}",
        ),
    log:
        f"{R}/logs/figures/{{task}}.log",
    conda:
        "../envs/fundusfm.yaml"
    params:
        task=lambda wc: q(fcfg.task_spec(config, wc.task)),
    shell:
        "fundusfm figures --task {wildcards.task} --task-json {params.task} --metrics {input} "
        "--out-dir {output} > {log} 2>&1"


rule cam:
    """Activation-map galleries (Grad-CAM, Grad-CAM++) of the task's model chosen on validation."""
    input:
        metrics=task_test_metrics,
        val=task_val_predictions,
        table=f"{R}/splits/{{task}}.csv",
    output:
        report(
            directory(f"{R}/cam/{{task}}"),
            patterns=["{name}.png"],
            caption="../workflow/report/cam.rst",
            category="Activation maps",
            subcategory="{task}",
        ),
    log:
        f"{R}/logs/cam/{{task}}.log",
    conda:
        "../envs/fundusfm.yaml"
    threads: 1
    params:
        task=task_json,
    shell:
        "fundusfm cam --best-of {input.metrics} --task-json {params.task} --table {input.table} "
        "--out-dir {output} --threads {threads} > {log} 2>&1"

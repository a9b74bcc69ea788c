# Data: draw the synthetic demo datasets, ingest every dataset into a manifest,
# preprocess (FOV crop, resize, quality), check overlaps and split each task.


rule synth:
    """Draw a synthetic fundus dataset (only for datasets with a `synth:` block)."""
    output:
        labels=f"{config['data_dir']}/{{dataset}}/labels.csv",
    log:
        f"{R}/logs/synth/{{dataset}}.log",
    priority: PRIORITY_PRETRAIN_PATH
    conda:
        "../envs/fundusfm.yaml"
    threads: half_the_cores
    params:
        args=synth_cli,
        out=lambda wc: f"{config['data_dir']}/{wc.dataset}",
    shell:
        "fundusfm synth --out {params.out} --workers {threads} {params.args} > {log} 2>&1"


rule ingest:
    """Turn a dataset as distributed into the manifest contract."""
    input:
        dataset_inputs,
    output:
        manifest=f"{R}/manifests/{{dataset}}.csv",
        report=f"{R}/manifests/{{dataset}}.report.json",
    log:
        f"{R}/logs/ingest/{{dataset}}.log",
    priority: PRIORITY_PRETRAIN_PATH
    conda:
        "../envs/fundusfm.yaml"
    params:
        cfg=lambda wc: q(config["datasets"][wc.dataset]),
    shell:
        "fundusfm ingest --name {wildcards.dataset} --config-json {params.cfg} "
        "--out {output.manifest} --report {output.report} > {log} 2>&1"


rule preprocess:
    """FOV crop + resize + quality check; one QC row per manifest row."""
    input:
        manifest=f"{R}/manifests/{{dataset}}.csv",
    output:
        qc=f"{R}/preprocessed/{{dataset}}/qc.csv",
        gallery=report(
            f"{R}/preprocessed/{{dataset}}/gallery.png",
            caption="../workflow/report/qc_gallery.rst",
            category="Preprocessing",
            subcategory="{dataset}",
        ),
    log:
        f"{R}/logs/preprocess/{{dataset}}.log",
    priority: PRIORITY_PRETRAIN_PATH
    conda:
        "../envs/fundusfm.yaml"
    threads: half_the_cores
    params:
        root=lambda wc: dataset_root(wc.dataset),
        size=config["preprocess"]["size"],
        normalise=config["preprocess"]["normalise"],
        format=config["preprocess"]["format"],
        max_reject=config["preprocess"]["max_reject_fraction"],
        thresholds=lambda wc: q(config["preprocess"].get("thresholds", {})),
        out=lambda wc: f"{R}/preprocessed/{wc.dataset}",
    shell:
        "fundusfm preprocess --manifest {input.manifest} --root {params.root} "
        "--out {params.out} --size {params.size} "
        "--normalise {params.normalise} --format {params.format} "
        "--max-reject-fraction {params.max_reject} --thresholds {params.thresholds} "
        "--workers {threads} --gallery {output.gallery} --no-progress > {log} 2>&1"


rule overlap:
    """Perceptual-hash duplicates between pretraining data and downstream evaluation sets."""
    input:
        qc=[f"{R}/preprocessed/{d}/qc.csv" for d in DATASETS],
    output:
        report=f"{R}/overlap/overlap.csv",
        exclude=f"{R}/overlap/exclude_from_pretraining.csv",
    log:
        f"{R}/logs/overlap.log",
    priority: PRIORITY_PRETRAIN_PATH
    conda:
        "../envs/fundusfm.yaml"
    params:
        qc=" ".join(f"{d}={R}/preprocessed/{d}/qc.csv" for d in DATASETS),
        upstream=" ".join(config["pretrain"]["datasets"]),
        evaluation=" ".join(
            sorted(
                {
                    d
                    for t in config["tasks"].values()
                    for d in t["datasets"] + t["external"]
                }
                - set(config["pretrain"]["datasets"])
            )
        ),
    shell:
        "fundusfm overlap --qc {params.qc} --upstream {params.upstream} "
        "--evaluation {params.evaluation} --out {output.report} --exclude-out {output.exclude} > {log} 2>&1"


rule split:
    """Patient-grouped, stratified, leak-checked folds of a task (or of pretraining)."""
    input:
        unpack(split_inputs),
    output:
        f"{R}/splits/{{task}}.csv",
    log:
        f"{R}/logs/split/{{task}}.log",
    priority: PRIORITY_PRETRAIN_PATH
    conda:
        "../envs/fundusfm.yaml"
    params:
        task=split_spec,
        args=split_args,
    shell:
        "fundusfm split --task-json {params.task} {params.args} --out {output} > {log} 2>&1"


use rule split as split_external with:
    output:
        f"{R}/splits/{{task}}/external_{{dataset}}.csv",
    log:
        f"{R}/logs/split/{{task}}/external_{{dataset}}.log",

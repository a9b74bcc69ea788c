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
        ingest_inputs,
    output:
        manifest=f"{R}/manifests/{{dataset}}.csv",
        report=f"{R}/manifests/{{dataset}}.report.json",
    log:
        f"{R}/logs/ingest/{{dataset}}.log",
    priority: PRIORITY_PRETRAIN_PATH
    conda:
        "../envs/fundusfm.yaml"
    params:
        cfg=lambda wc: q(ingest_entry(wc.dataset)),
        # every problem of a failed ingest; not an output, so Snakemake keeps it
        problems=f"{R}/logs/ingest/{{dataset}}.problems.csv",
    shell:
        "fundusfm ingest --name {wildcards.dataset} --config-json {params.cfg} "
        "--out {output.manifest} --report {output.report} --problems {params.problems} > {log} 2>&1"


rule preprocess:
    """FOV crop + resize + quality check; one QC row per manifest row. When the job fails
    (too many rejects), Snakemake deletes its outputs: the QC table and gallery are first
    copied to results/logs/preprocess/<dataset>/ so the user can see why."""
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
        max_reject=lambda wc: preprocess_setting(wc.dataset, "max_reject_fraction"),
        thresholds=lambda wc: q(preprocess_setting(wc.dataset, "thresholds")),
        monochrome=lambda wc: preprocess_setting(wc.dataset, "monochrome"),
        alpha=lambda wc: preprocess_setting(wc.dataset, "alpha"),
        max_decode=config["preprocess"]["max_decode_pixels"],
        out=lambda wc: f"{R}/preprocessed/{wc.dataset}",
        kept=lambda wc: f"{R}/logs/preprocess/{wc.dataset}",
    shell:
        "rm -rf {params.kept}; "
        "fundusfm preprocess --manifest {input.manifest} --root {params.root} "
        "--out {params.out} --size {params.size} "
        "--normalise {params.normalise} --format {params.format} "
        "--max-reject-fraction {params.max_reject} --thresholds {params.thresholds} "
        "--monochrome {params.monochrome} --alpha {params.alpha} --max-decode-pixels {params.max_decode} "
        "--workers {threads} --gallery {output.gallery} --no-progress > {log} 2>&1 "
        "|| {{ rc=$?; mkdir -p {params.kept}; "
        "cp -f {output.qc} {output.gallery} {params.kept}/ 2>/dev/null || true; "
        'echo "failed (rc $rc): QC table and gallery kept in {params.kept}/" >> {log}; exit $rc; }}'


rule overlap:
    """Upstream images that near-duplicate an evaluation image, to leave out of pretraining.
    Its own rule, over the pretraining and evaluation datasets only: adding an external set
    to a task whose datasets are already evaluated changes nothing here, so pretraining and
    the fine-tunes stay (the study-wide report is `overlap_report`)."""
    input:
        qc=[f"{R}/preprocessed/{d}/qc.csv" for d in DATASETS],
    output:
        exclude=f"{R}/overlap/exclude_from_pretraining.csv",
    log:
        f"{R}/logs/overlap.log",
    priority: PRIORITY_PRETRAIN_PATH
    conda:
        "../envs/fundusfm.yaml"
    params:
        qc=overlap_qc_arg(),
        upstream=" ".join(config["pretrain"]["datasets"]),
        evaluation=overlap_evaluation_arg(),
        keep=overlap_keep_arg(),
    shell:
        "fundusfm overlap --qc {params.qc} --upstream {params.upstream} "
        "--evaluation {params.evaluation} {params.keep} --exclude-out {output.exclude} > {log} 2>&1"


rule overlap_report:
    """Every near-duplicate pair of the study (pretraining vs downstream, development vs
    external, within development) and what was done with it."""
    input:
        qc=[f"{R}/preprocessed/{d}/qc.csv" for d in DATASETS],
    output:
        report=f"{R}/overlap/overlap.csv",
    log:
        f"{R}/logs/overlap_report.log",
    conda:
        "../envs/fundusfm.yaml"
    params:
        qc=overlap_qc_arg(),
        upstream=" ".join(config["pretrain"]["datasets"]),
        evaluation=overlap_evaluation_arg(),
        tasks=" ".join(
            f"{name}={','.join(t['datasets'])}:{','.join(t['external'])}"
            for name, t in sorted(config["tasks"].items())
        ),
        keep=overlap_keep_arg(),
    shell:
        "fundusfm overlap --qc {params.qc} --upstream {params.upstream} "
        "--evaluation {params.evaluation} --task {params.tasks} {params.keep} "
        "--out {output.report} > {log} 2>&1"


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

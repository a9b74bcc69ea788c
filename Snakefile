# fundusfm: the disease-specific fundus foundation-model study as one workflow.
# ingest -> preprocess -> pretrain -> finetune -> evaluate -> tables/figures -> report
# See README.md and docs/architecture.md.


from snakemake.utils import min_version

min_version("9.0")


# The demo config unless --configfile names another (Snakemake would merge the two).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "rules/common.smk"


# front page: the generated protocol card once the study has run, else the static text
report: report_front_page()


include: "rules/tracking.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/release.smk"


rule all:
    default_target: True
    input:
        all_targets(),
        mlflow_targets(),
        release_targets(),

"""fundusfm: a disease-specific foundation model for retinal fundus photographs.

The study (ingest -> preprocess -> pretrain -> finetune -> evaluate -> report) runs as a
Snakemake workflow whose every rule calls the ``fundusfm`` command line.
"""

__version__ = "0.1.0"

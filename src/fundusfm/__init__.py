"""fundusfm: a disease-specific foundation model for retinal fundus photographs.

The study (ingest -> preprocess -> pretrain -> finetune -> evaluate -> report) runs as a
Snakemake workflow whose every rule calls the ``fundusfm`` command line.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``fundusfm.load_model`` without importing torch at ``import fundusfm``
    if name == "load_model":
        from fundusfm.release import load_model

        return load_model
    raise AttributeError(f"module 'fundusfm' has no attribute {name!r}")

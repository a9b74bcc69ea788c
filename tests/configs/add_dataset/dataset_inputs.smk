# --- proposed for rules/common.smk (tests/test_add_dataset.py appends it to a copy of the
# rules while the shipped ones lack it; rules/data.smk's ingest then uses `input: dataset_inputs`)
import os


def manifest_csv(ds):
    """Where the `manifest` adapter reads a dataset's CSV (fundusfm.data.adapters.generic):
    `path` under `root` when that file exists, else `path` as given (absolute, or relative
    to the working directory: a file a rule will write)."""
    p = ds.get("path", "manifest.csv")
    if os.path.isabs(p) or not ds.get("root"):
        return p
    under_root = os.path.join(ds["root"], p)
    return under_root if os.path.isfile(under_root) else p


def dataset_inputs(wildcards):
    """Files ingest reads that another rule may write, so that rule runs first: a synthetic
    dataset's labels.csv (rule synth) or a `manifest` dataset's CSV (e.g. a user's rule).
    """
    ds = config["datasets"][wildcards.dataset]
    if "synth" in ds:
        return [f"{ds['root']}/labels.csv"]
    if ds["adapter"] == "manifest":
        return [manifest_csv(ds)]
    return []

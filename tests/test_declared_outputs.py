"""Every file a rule writes is a declared output (Snakemake then removes it on failure,
reruns when it is missing, and knows who makes it)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from workflow_helpers import copy_workflow, run_snakemake, tiny_config  # noqa: E402


def _outputs(dry_run: str, rule: str) -> list[str]:
    """The ``output:`` lines of ``rule``'s jobs in a dry run."""
    jobs = re.split(r"\n(?=(?:local)?rule \w+:)", dry_run)
    out = []
    for job in jobs:
        if re.match(rf"(?:local)?rule {rule}:", job.strip()):
            out += re.findall(r"output: (.*)", job)
    return out


def test_train_config_and_comparisons_are_declared_outputs(tmp_path):
    wd = copy_workflow(tmp_path / "wf", tiny_config())
    p = run_snakemake(wd, "-n", timeout=300)
    for rule, name in (("pretrain", "train_config.json"), ("finetune", "train_config.json"),
                       ("table", "_comparisons.csv"), ("table", "_models.csv")):
        lines = _outputs(p.stdout, rule)
        assert lines and all(name in line for line in lines), (rule, lines[:2])

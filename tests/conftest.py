"""Fixtures shared across test files: the tiny study, run once per session."""

from __future__ import annotations

import os

import pytest

from workflow_helpers import copy_workflow, run_snakemake, tiny_config


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """The real workflow run to the end (tables, figures, CAMs, release, MLflow) on
    tests/configs/tiny.yaml in a temporary copy. Tests must not modify it: copy it first."""
    wd = copy_workflow(tmp_path_factory.mktemp("tiny_study"), tiny_config())
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{wd}/results/mlflow.db")
    run_snakemake(wd, "--cores", "2", env=env)
    return wd

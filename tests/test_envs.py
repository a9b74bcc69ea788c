"""envs/fundusfm.yaml (for cluster users' conda) stays pinned to what CI tests."""

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0].strip().lower()


def conda_pins() -> dict[str, str]:
    env = yaml.safe_load((REPO / "envs" / "fundusfm.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = {}
    for item in pip:
        if "==" not in item:  # the project itself
            continue
        name, version = item.split("==")
        pins[name.lower()] = version
    return pins


def test_every_runtime_dependency_is_pinned_in_the_conda_env():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    missing = {_name(d) for d in deps} - set(conda_pins())
    assert not missing, f"add to envs/fundusfm.yaml: {sorted(missing)}"


def test_conda_pins_equal_the_tested_versions():
    drift = {n: (v, md.version(n)) for n, v in conda_pins().items() if md.version(n) != v}
    assert not drift, f"envs/fundusfm.yaml pins differ from the tested environment (pinned, installed): {drift}"


def test_conda_env_installs_the_project_itself_not_editable():
    env = yaml.safe_load((REPO / "envs" / "fundusfm.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert ".." in pip and not any(item.startswith("-e") for item in pip)


# torch.load(weights_only=True) is bypassable up to torch 2.5.1 (CVE-2025-32434)
SAFE_TORCH = Version("2.6")


def test_torch_floor_excludes_the_bypassable_weights_only_versions():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(Requirement(d) for d in deps if _name(d) == "torch")
    floors = [Version(s.version) for s in torch_req.specifier if s.operator in (">=", "==", "~=")]
    assert floors and min(floors) >= SAFE_TORCH, f"pyproject.toml: {torch_req} admits torch < {SAFE_TORCH}"
    for bad in ("2.4.1", "2.5.1"):
        assert not torch_req.specifier.contains(bad), f"pyproject.toml: {torch_req} admits torch {bad}"
    assert Version(conda_pins()["torch"]) >= SAFE_TORCH, "envs/fundusfm.yaml pins a torch before 2.6"
    assert Version(md.version("torch").split("+")[0]) >= SAFE_TORCH

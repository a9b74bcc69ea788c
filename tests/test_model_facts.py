"""fundusfm model-facts: parameters, input, feature width and throughput of an init's model."""

from __future__ import annotations

import json

import timm
import torch

from fundusfm.cli import main

TASK = json.dumps({"type": "multiclass", "label": "grade", "classes": ["a", "b", "c"]})


def test_model_facts_count_backbone_and_head_and_time_the_model(tmp_path):
    out = tmp_path / "facts.json"
    hp = {"arch": "test_resnet", "head": "paper", "img_size": 48, "mean": "inception", "std": "inception"}
    assert main(["model-facts", "--init-name", "tiny", "--hparams-json", json.dumps(hp), "--task-json", TASK,
                 "--gpus", "0", "--seconds", "0.2", "--batch-size", "4", "--out", str(out)]) == 0
    facts = json.loads(out.read_text())
    backbone = sum(p.numel() for p in timm.create_model("test_resnet", num_classes=0).parameters())
    head = (96 * 512 + 512) + 2 * 512 + (512 * 3 + 3)  # Linear, BatchNorm1d, Linear of the paper's head
    assert (facts["params_backbone"], facts["params_head"]) == (backbone, head)
    assert facts["params_total"] == backbone + head
    assert facts["feature_dim"] == 96 and facts["img_size"] == 48 and facts["num_outputs"] == 3
    assert facts["mean"] == facts["std"] == [0.5, 0.5, 0.5] and facts["init"] == "tiny"
    t = facts["throughput"]
    assert t["images_per_s"] > 0 and t["timed_s"] >= 0.2 and t["batches"] >= 1 and t["batch_size"] == 4
    assert t["device"] == "cpu" and t["device_name"] and t["torch_threads"] == torch.get_num_threads()


def test_model_facts_refuse_cuda_without_gpus_and_an_unknown_arch(tmp_path, capsys):
    out = str(tmp_path / "f.json")
    assert main(["model-facts", "--init-name", "x", "--task-json", TASK, "--gpus", "0", "--device", "cuda",
                 "--out", out]) == 1
    assert "--device cuda with --gpus 0" in capsys.readouterr().err
    assert main(["model-facts", "--init-name", "x", "--task-json", TASK, "--hparams-json", '{"arch": "resnet999"}',
                 "--gpus", "0", "--out", out]) == 1
    assert "unknown timm architecture 'resnet999'" in capsys.readouterr().err

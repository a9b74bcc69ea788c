"""Model factory, heads and init sources with their key reports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from fundusfm.models import (
    ImageNetWeightsUnavailable,
    InitError,
    create,
    load_init,
)

torch.set_num_threads(1)


def test_paper_head_follows_backbone_feature_width():
    m = create("resnet10t", 3, head="paper")
    assert isinstance(m.fc, nn.Sequential)
    assert [type(x) for x in m.fc] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert m.fc[0].in_features == 512 and m.fc[0].out_features == 512 and m.fc[3].out_features == 3
    mb = create("mobilenetv3_small_100", 4, head="paper")  # classifier fed by a 1024-wide projection
    assert mb.classifier[0].in_features == 1024
    m.eval()
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_unknown_arch_and_head_are_rejected():
    with pytest.raises(ValueError, match="unknown timm architecture"):
        create("resnet_does_not_exist", 2)
    with pytest.raises(ValueError, match="unknown head"):
        create("resnet10t", 2, head="mlp")


def _imagenet_file(tmp_path):
    torch.manual_seed(123)
    ref = timm.create_model("resnet10t", pretrained=False)  # stands in for the ImageNet weights
    path = tmp_path / "resnet10t_in1k.safetensors"
    save_file(ref.state_dict(), str(path))
    return ref, path


def test_imagenet_init_from_local_file_reports_fresh_head(tmp_path):
    ref, path = _imagenet_file(tmp_path)
    model = create("resnet10t", 2, head="paper")
    report = load_init(model, "imagenet", imagenet_weights=path)
    assert report.source == "imagenet:resnet10t"
    assert not report.partial
    assert sorted(report.head_dropped) == ["fc.bias", "fc.weight"]
    assert all(k.startswith("fc.") for k in report.head_reinitialised) and report.head_reinitialised
    assert len(report.loaded) == report.n_model_keys - len(report.head_reinitialised)
    torch.testing.assert_close(model.conv1[0].weight, ref.conv1[0].weight)
    # the same through the env variable, and create(pretrained_init='imagenet') directly
    os.environ["FUNDUSFM_IMAGENET_WEIGHTS"] = str(path)
    try:
        direct = create("resnet10t", 2, pretrained_init="imagenet")
    finally:
        del os.environ["FUNDUSFM_IMAGENET_WEIGHTS"]
    torch.testing.assert_close(direct.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)


def test_imagenet_missing_local_file_is_a_clear_error(tmp_path):
    with pytest.raises(ImageNetWeightsUnavailable, match="does not exist"):
        load_init(create("resnet10t", 2), "imagenet", imagenet_weights=tmp_path / "nope.safetensors")


@pytest.mark.slow
def test_imagenet_offline_without_weights_says_how_to_provide_them(tmp_path):
    code = ("from fundusfm.models import create\n"
            "try:\n    create('resnet10t', 2, pretrained_init='imagenet')\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    env.pop("FUNDUSFM_IMAGENET_WEIGHTS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert out.startswith("ImageNetWeightsUnavailable")
    assert "imagenet_weights" in out and "FUNDUSFM_IMAGENET_WEIGHTS" in out


def _paper_release(tmp_path, num_classes=2):
    """The paper's released format: a DataParallel torchvision ResNet50 with its head, pickled whole."""
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    net.fc = nn.Sequential(nn.Linear(2048, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, num_classes))
    dp = nn.DataParallel(net)
    path = tmp_path / "paper_resnet50.pth"
    torch.save(dp, path)
    return net, path


def test_paper_release_needs_trust_then_loads_backbone_and_converts(tmp_path):
    net, path = _paper_release(tmp_path)
    model = create("resnet50", 2, head="paper")
    fresh_fc3 = model.fc[3].weight.detach().clone()
    with pytest.raises(InitError, match="--trust-pickle"):
        load_init(model, f"checkpoint:{path}")
    report = load_init(model, f"checkpoint:{path}", trust_pickle=True, conversions=tmp_path / "conversions")
    # the whole head stays fresh by default (even where shapes fit), the backbone loads fully
    head_keys = sorted(k for k in model.state_dict() if k.startswith("fc.") and not k.endswith("num_batches_tracked"))
    assert not report.partial and sorted(report.head_reinitialised) == head_keys
    assert len(report.loaded) == report.n_model_keys - len(head_keys)
    assert report.converted_to.startswith(str(tmp_path / "conversions")) and os.path.isfile(report.converted_to)
    torch.testing.assert_close(model.fc[3].weight, fresh_fc3)
    torch.testing.assert_close(model.layer4[2].bn3.running_var, net.layer4[2].bn3.running_var)
    # later loads (still trusted) read the safetensors conversion in the results tree;
    # carry_head='hidden' carries the 2048->512->BN block and never the final layer
    other = create("resnet50", 2, head="paper")
    r2 = load_init(other, f"checkpoint:{path}", carry_head="hidden", trust_pickle=True,
                   conversions=tmp_path / "conversions")
    assert r2.converted_to == report.converted_to
    assert sorted(r2.head_reinitialised) == ["fc.3.bias", "fc.3.weight"]
    assert "fc.0.weight" in r2.head_carried and "fc.1.running_var" in r2.head_carried
    torch.testing.assert_close(other.fc[0].weight, net.fc[0].weight)
    assert not torch.equal(other.fc[3].weight, net.fc[3].weight)
    # into timm's linear head: the whole paper head is dropped, the backbone loads
    r3 = load_init(create("resnet50", 2, head="timm"), f"checkpoint:{path}", trust_pickle=True,
                   conversions=tmp_path / "conversions")
    assert not r3.partial and len(r3.head_dropped) == 8 and sorted(r3.head_reinitialised) == ["fc.bias", "fc.weight"]


def test_two_class_task_from_fundus_init_starts_with_a_fresh_final_layer(tmp_path):
    """Issue 14: a normal/abnormal checkpoint's classifier fits every 2-class task by shape;
    it must not be carried (the arms would differ in more than the representation)."""
    torch.manual_seed(1)
    upstream = create("resnet10t", 2, head="timm")
    path = tmp_path / "fundus.safetensors"
    save_file(upstream.state_dict(), str(path))
    torch.manual_seed(2)
    task_model = create("resnet10t", 2, head="timm")
    report = load_init(task_model, f"checkpoint:{path}")
    assert sorted(report.head_reinitialised) == ["fc.bias", "fc.weight"]
    assert not torch.equal(task_model.fc.weight, upstream.fc.weight)
    torch.testing.assert_close(task_model.conv1[0].weight, upstream.conv1[0].weight)  # backbone carried
    with pytest.raises(InitError, match="carry_head"):
        load_init(create("resnet10t", 2), f"checkpoint:{path}", carry_head="all")


def test_wrong_architecture_checkpoint_fails_clearly(tmp_path):
    path = tmp_path / "r10.safetensors"
    save_file(create("resnet10t", 2).state_dict(), str(path))
    with pytest.raises(InitError, match="does not fit test_vit.*another architecture"):
        load_init(create("test_vit", 2, img_size=32), f"checkpoint:{path}", allow_partial=True)


def test_partial_match_beyond_head_fails_unless_allowed(tmp_path):
    state = create("resnet10t", 2).state_dict()
    del state["layer4.0.conv2.weight"]
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    with pytest.raises(InitError, match="partly beyond the head.*layer4.0.conv2.weight"):
        load_init(create("resnet10t", 2), f"checkpoint:{path}")
    report = load_init(create("resnet10t", 2), f"checkpoint:{path}", allow_partial=True)
    assert report.missing == ["layer4.0.conv2.weight"] and report.partial


def test_own_checkpoint_with_other_head_size_drops_head(tmp_path):
    src = create("resnet10t", 2, head="paper")
    path = tmp_path / "model.safetensors"
    save_file(src.state_dict(), str(path))
    dst = create("resnet10t", 7, head="paper")
    report = load_init(dst, f"checkpoint:{path}", carry_head="hidden")
    assert sorted(report.head_dropped) == ["fc.3.bias", "fc.3.weight"]
    assert "fc.0.weight" in report.head_carried
    torch.testing.assert_close(dst.fc[0].weight, src.fc[0].weight)
    assert report.to_dict()["loaded"] == len(report.loaded)

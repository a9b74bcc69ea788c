"""Checkpoint formats: released foundation-model files, in their authors' key layouts.

Weights cannot be downloaded here, so each test writes a random-weight checkpoint in the
original layout: a (tiny) timm model's state dict renamed into the authors' module names,
saved the way the authors save it.  Each fixture cites the public code it mimics.  The
checks: every backbone key matches, and the loaded model computes what the authors'
network (or the timm model built directly with the same weights) computes.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from torch import nn

from checkpoint_layouts import TINY_VIT, mae_checkpoint, randomise as _randomise
from fundusfm.models import InitError, KeyReport, create, load_init
from fundusfm.models import formats

@torch.no_grad()
def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled pre-logit features of a timm model (the head is always fresh in a fine-tune)."""
    model.eval()
    return model.forward_head(model.forward_features(x), pre_logits=True)


def _backbone_keys(model: nn.Module) -> list[str]:
    heads = (model.pretrained_cfg["classifier"] + ".",)
    return sorted(k for k in model.state_dict() if not k.startswith(heads) and not k.endswith("num_batches_tracked"))


def _image(size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- RETFound MAE

def _mae_checkpoint(tmp_path, img_size=64, seed=1):
    return mae_checkpoint(tmp_path / "RETFound_cfp_weights.pth", "vit_large_patch16_224", img_size, seed, **TINY_VIT)


def test_retfound_mae_global_pool_model_loads_as_retfound_finetunes_it(tmp_path):
    enc, path = _mae_checkpoint(tmp_path)
    target = timm.create_model("vit_large_patch16_224", img_size=64, num_classes=3, global_pool="avg", **TINY_VIT)
    report = load_init(target, f"checkpoint:{path}")
    assert report.format == "retfound_mae (auto)"
    assert not report.partial and not report.missing and not report.unexpected
    # RETFound's main_finetune.py asserts missing == {head, fc_norm}: fc_norm starts fresh
    assert sorted(report.fresh) == ["fc_norm.bias", "fc_norm.weight"]
    assert sorted(report.loaded) == sorted(set(_backbone_keys(target)) - set(report.fresh))
    assert {"mask_token", "norm.weight", "decoder_pred.weight", "decoder_blocks.0.attn.qkv.weight"} <= set(report.dropped)
    assert not any(k.startswith("decoder_") or k == "mask_token" for k in report.loaded)
    # reference: RETFound's own loading (models_vit.VisionTransformer(global_pool=True) is
    # timm's ViT with global_pool='avg'; strict=False load of checkpoint['model'])
    ref = timm.create_model("vit_large_patch16_224", img_size=64, num_classes=3, global_pool="avg", **TINY_VIT)
    msg = ref.load_state_dict(torch.load(path, weights_only=False)["model"], strict=False)
    assert set(msg.missing_keys) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    x = _image(64)
    torch.testing.assert_close(_features(target, x), _features(ref, x), rtol=0, atol=0)


def test_retfound_mae_cls_token_model_loads_norm_and_matches_the_encoder(tmp_path):
    enc, path = _mae_checkpoint(tmp_path)
    target = timm.create_model("vit_large_patch16_224", img_size=64, num_classes=2, **TINY_VIT)  # token pool
    report = load_init(target, f"checkpoint:{path}", checkpoint_format="retfound_mae")
    assert report.format == "retfound_mae" and not report.fresh and not report.partial
    assert sorted(report.loaded) == _backbone_keys(target)  # 100 %, norm included
    x = _image(64)
    torch.testing.assert_close(_features(target, x), _features(enc, x), rtol=0, atol=0)


def test_retfound_mae_position_embeddings_resampled_as_retfound_interpolate_pos_embed(tmp_path):
    enc, path = _mae_checkpoint(tmp_path, img_size=64)  # 4x4 patch grid
    target = timm.create_model("vit_large_patch16_224", img_size=96, num_classes=2, **TINY_VIT)  # 6x6
    report = load_init(target, f"checkpoint:{path}")
    assert not report.partial and "pos_embed" in report.loaded
    # rmaphoh/RETFound_MAE util/pos_embed.py interpolate_pos_embed: the class token kept,
    # the patch grid resized with F.interpolate(mode='bicubic', align_corners=False)
    pos = enc.pos_embed.detach()
    grid = pos[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
    torch.testing.assert_close(target.pos_embed.detach(), torch.cat([pos[:, :1], grid], dim=1))


# ----------------------------------------------------------------------------- DINOv2

DINOV2_VARIANTS = {
    # hub name: (timm architecture, register tokens, SwiGLU FFN)
    "dinov2_vits14": ("vit_small_patch14_dinov2", False, False),
    "dinov2_vits14_reg4": ("vit_small_patch14_reg4_dinov2", True, False),
    "dinov2_vitg14": ("vit_giant_patch14_dinov2", False, True),
}


def _dinov2_state(variant: str, seed: int = 3):
    """A DINOv2 hub checkpoint (<model>_pretrain.pth, a flat state dict loaded strictly).

    Keys: facebookresearch/dinov2 dinov2/models/vision_transformer.py DinoVisionTransformer
    at img_size 518, patch 14 (hub/backbones.py): cls_token, pos_embed (1, 1 + 37*37, D),
    register_tokens (1, 4, D) for *_reg, mask_token (1, D), blocks.N with ls1.gamma/ls2.gamma
    (layers/layer_scale.py) and mlp.fc1/fc2 or, for ViT-g, mlp.w12/w3 (layers/swiglu_ffn.py),
    norm.  With registers the class token gets pos_embed[:, 0] before the registers are
    inserted (prepare_tokens_with_masks), which timm holds as cls_token + pos_embed[:, 0].
    """
    arch, registers, swiglu = DINOV2_VARIANTS[variant]
    model = _randomise(timm.create_model(arch, img_size=518, num_classes=0, **TINY_VIT), seed)
    g = torch.Generator().manual_seed(seed + 100)
    state = {}
    for k, v in model.state_dict().items():
        if swiglu:
            k = k.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        state[k] = v.clone()
    if registers:
        pos0 = torch.randn(1, 1, model.embed_dim, generator=g)
        state["register_tokens"] = state.pop("reg_token")
        state["pos_embed"] = torch.cat([pos0, state["pos_embed"]], dim=1)
        state["cls_token"] = state["cls_token"] - pos0
    state["mask_token"] = torch.randn(1, model.embed_dim, generator=g)
    return arch, model, state


@pytest.mark.parametrize("variant", sorted(DINOV2_VARIANTS))
def test_dinov2_hub_checkpoint_matches_fully_with_equal_outputs(tmp_path, variant):
    arch, ref, state = _dinov2_state(variant)
    assert state["pos_embed"].shape[1] == 1 + 37 * 37 and any(k.endswith("ls1.gamma") for k in state)
    path = tmp_path / f"{variant}_pretrain.pth"
    torch.save(state, path)
    target = timm.create_model(arch, img_size=518, num_classes=0, **TINY_VIT)
    report = load_init(target, f"checkpoint:{path}")
    assert report.format == "dinov2 (auto)" and report.dropped == ["mask_token"]
    assert not report.partial and sorted(report.loaded) == _backbone_keys(target)
    x = _image(518)
    torch.testing.assert_close(_features(target, x), _features(ref, x))


@pytest.mark.parametrize("variant", ["dinov2_vits14", "dinov2_vits14_reg4"])
def test_dinov2_at_another_size_equals_timms_own_conversion(tmp_path, variant):
    arch, _, state = _dinov2_state(variant)
    path = tmp_path / f"{variant}_pretrain.pth"
    torch.save(state, path)
    target = timm.create_model(arch, img_size=224, num_classes=2, **TINY_VIT)
    report = load_init(target, f"checkpoint:{path}", checkpoint_format="dinov2")
    assert not report.partial and target.pos_embed.shape[1] == 16 * 16 + (0 if "reg" in variant else 1)
    # reference: timm loading the same file as pretrained weights (its filter: _convert_dinov2
    # and resample_abs_pos_embed)
    ref = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path), "num_classes": 0},
                            img_size=224, num_classes=2, **TINY_VIT)
    x = _image(224)
    torch.testing.assert_close(_features(target, x), _features(ref, x), rtol=0, atol=0)


def test_dinov2_teacher_checkpoint_drops_dino_and_ibot_heads(tmp_path):
    """{"teacher": teacher.state_dict()}: facebookresearch/dinov2 dinov2/train/train.py do_test;
    the teacher is a ModuleDict of backbone, dino_head and ibot_head (train/ssl_meta_arch.py),
    a DINOHead being mlp.N + weight-normed last_layer (layers/dino_head.py).  RETFound-DINOv2
    files are read this way by rmaphoh/RETFound_MAE main_finetune.py (checkpoint['teacher'])."""
    arch, ref, state = _dinov2_state("dinov2_vits14_reg4")
    teacher = {f"backbone.{k}": v for k, v in state.items()}
    for head in ("dino_head", "ibot_head"):
        teacher[f"{head}.mlp.0.weight"] = torch.randn(64, 32)
        teacher[f"{head}.mlp.0.bias"] = torch.randn(64)
        teacher[f"{head}.last_layer.weight_g"] = torch.randn(128, 1)
        teacher[f"{head}.last_layer.weight_v"] = torch.randn(128, 64)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": teacher}, path)
    target = timm.create_model(arch, img_size=518, num_classes=0, **TINY_VIT)
    report = load_init(target, f"checkpoint:{path}")
    assert report.format == "dinov2 (auto)" and report.renamed["backbone."] == ""
    assert sum(k.startswith(("dino_head.", "ibot_head.")) for k in report.dropped) == 8
    assert not report.partial and sorted(report.loaded) == _backbone_keys(target)
    x = _image(518, seed=1)
    torch.testing.assert_close(_features(target, x), _features(ref, x))


# ----------------------------------------------------------------------------- RETFound-Green

def _green_checkpoint(tmp_path, extras=False):
    """retfoundgreen_statedict.pth: justinengelmann/RETFound_Green README.md loads it with
    timm.create_model('vit_small_patch14_reg4_dinov2', img_size=(392, 392), num_classes=0)
    and load_state_dict (strict): timm's own names of that model, no head.  Depth 1 here
    (the widths are the published ViT-S/14's).  ``extras``: the projector / ls_projector its
    pretraining adds (Training_and_eval_code/TokenReconstructionPretraining.ipynb)."""
    model = _randomise(timm.create_model("vit_small_patch14_reg4_dinov2", img_size=392, num_classes=0, depth=1), 5)
    state = dict(model.state_dict())
    if extras:
        state.update({"projector.0.weight": torch.ones(384), "projector.1.weight": torch.zeros(384, 384),
                      "ls_projector.gamma": torch.ones(384)})
    path = tmp_path / "retfoundgreen_statedict.pth"
    torch.save(state, path)
    return model, path


@pytest.mark.parametrize("extras", [False, True])
def test_retfound_green_loads_at_392_with_equal_outputs(tmp_path, extras):
    ref, path = _green_checkpoint(tmp_path, extras)
    target = timm.create_model("vit_small_patch14_reg4_dinov2", img_size=392, num_classes=2, depth=1)
    report = load_init(target, f"checkpoint:{path}")
    assert report.format == "retfound_green (auto)"
    assert report.dropped == (["projector.0.weight", "projector.1.weight", "ls_projector.gamma"] if extras else [])
    assert not report.partial and sorted(report.loaded) == _backbone_keys(target)
    x = _image(392)
    torch.testing.assert_close(_features(target, x), _features(ref, x), rtol=0, atol=0)


def test_retfound_green_at_224_resamples_the_patch_grid_with_timm(tmp_path):
    ref, path = _green_checkpoint(tmp_path)
    target = timm.create_model("vit_small_patch14_reg4_dinov2", img_size=224, num_classes=2, depth=1)
    report = load_init(target, f"checkpoint:{path}", checkpoint_format="retfound_green")
    assert not report.partial
    # no_embed_class: the 28x28 grid holds no prefix token
    expected = resample_abs_pos_embed(ref.pos_embed.detach(), new_size=(16, 16), num_prefix_tokens=0)
    torch.testing.assert_close(target.pos_embed.detach(), expected)


# ----------------------------------------------------------------------------- FLAIR

class _Module(nn.Module):
    """A container whose attribute names make the state-dict keys."""

    def __init__(self, **children):
        super().__init__()
        for name, child in children.items():
            setattr(self, name, child)


def _flair_model(seed=7) -> tuple[nn.Module, nn.Module]:
    """FLAIRModel's module tree: jusiro/FLAIR flair/modeling/model.py.  vision_model =
    VisionModel(.model = torchvision resnet50 with fc = Identity, .projection_head_vision =
    ProjectionLayer(.projection = Linear(2048, 512, bias=False))); text_model = TextModel
    (.model = Bio_ClinicalBERT (transformers BertModel names; two layers' worth here),
    .projection_head_text.projection = Linear(768, 512, bias=False)); logit_scale."""
    torch.manual_seed(seed)
    resnet = torchvision.models.resnet50(weights=None)
    resnet.fc = nn.Identity()
    _randomise(resnet, seed)
    bert = {
        "embeddings.word_embeddings.weight": (30, 8), "embeddings.position_embeddings.weight": (77, 8),
        "embeddings.token_type_embeddings.weight": (2, 8), "embeddings.LayerNorm.weight": (8,),
        "embeddings.LayerNorm.bias": (8,), "encoder.layer.0.attention.self.query.weight": (8, 8),
        "encoder.layer.0.attention.self.key.weight": (8, 8), "encoder.layer.0.attention.self.value.weight": (8, 8),
        "encoder.layer.0.attention.output.dense.weight": (8, 8), "encoder.layer.0.intermediate.dense.weight": (16, 8),
        "encoder.layer.0.output.dense.weight": (8, 16), "pooler.dense.weight": (8, 8),
    }
    text = nn.Module()
    for i, (k, shape) in enumerate(bert.items()):
        text.register_buffer(f"b{i}", torch.randn(shape))
    flair = _Module(
        vision_model=_Module(model=resnet, projection_head_vision=_Module(projection=nn.Linear(2048, 512, bias=False))),
        text_model=_Module(model=text, projection_head_text=_Module(projection=nn.Linear(768, 512, bias=False))),
    )
    flair.logit_scale = nn.Parameter(torch.log(torch.tensor(1 / 0.07)))
    state = flair.state_dict()
    # BERT's own key names for the text tower
    names = dict(zip([f"text_model.model.b{i}" for i in range(len(bert))], [f"text_model.model.{k}" for k in bert]))
    return resnet.eval(), {names.get(k, k): v for k, v in state.items()}


@pytest.fixture(scope="module")
def flair_model():
    return _flair_model()


@pytest.mark.parametrize("container", ["pth", "safetensors"])
def test_flair_vision_encoder_loads_into_timm_resnet50(tmp_path, container, flair_model):
    resnet, state = flair_model
    if container == "pth":  # FLAIRModel.fit: torch.save(self.state_dict(), ...)
        path = tmp_path / "flair_resnet.pth"
        torch.save(state, path)
    else:  # huggingface_hub PyTorchModelHubMixin (FLAIRModel.from_pretrained("jusiro2/FLAIR"))
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    target = create("resnet50", 2, head="paper")
    report = load_init(target, f"checkpoint:{path}")
    assert report.format == "flair (auto)" and report.renamed == {"vision_model.model.": ""}
    assert not report.partial and sorted(report.loaded) == _backbone_keys(target)
    assert {"logit_scale", "vision_model.projection_head_vision.projection.weight",
            "text_model.model.pooler.dense.weight", "text_model.projection_head_text.projection.weight"} <= set(report.dropped)
    x = _image(32)
    with torch.no_grad():
        expected = resnet(x)  # FLAIR's vision encoder before its projection head
    torch.testing.assert_close(_features(target, x), expected)


# ----------------------------------------------------------------------------- the paper's release

def _paper_release(tmp_path, seed=11):
    """The paper's release: Jang-Boa/Research-Foundation-Retina Downstream_Task/utils/model.py
    ResNetModel('resnet50'): torchvision resnet50, fc = Sequential(Linear(2048, 512),
    BatchNorm1d(512), ReLU(), Linear(512, 2)), wrapped in nn.DataParallel; inference.ipynb
    reads it with torch.load(path) as a whole module, so it is pickled whole."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet50(weights=None)
    net.fc = nn.Sequential(nn.Linear(2048, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 2))
    _randomise(net, seed)
    path = tmp_path / "resnet50_512_ImageNet+Fundus.pth"
    torch.save(nn.DataParallel(net), path)
    return net, path


def test_paper_pickle_needs_trust_then_matches_the_released_backbone(tmp_path):
    net, path = _paper_release(tmp_path)
    target = create("resnet50", 2, head="paper")
    with pytest.raises(InitError, match="--trust-pickle"):
        load_init(target, f"checkpoint:{path}", checkpoint_format="paper_pickle")
    report = load_init(target, f"checkpoint:{path}", trust_pickle=True, checkpoint_format="paper_pickle",
                       conversions=tmp_path / "conversions")
    assert report.format == "paper_pickle" and report.converted_to.startswith(str(tmp_path / "conversions"))
    assert not report.partial and set(_backbone_keys(target)) <= set(report.loaded)  # the head: see test_models
    body = copy.deepcopy(net).eval()
    body.fc = nn.Identity()
    x = _image(32)
    with torch.no_grad():
        expected = body(x)
    torch.testing.assert_close(_features(target, x), expected)
    # later (trusted) reads use the safetensors conversion; auto still tells the format
    again = create("resnet50", 2, head="paper")
    report = load_init(again, f"checkpoint:{path}", trust_pickle=True, conversions=tmp_path / "conversions")
    assert report.format == "paper_pickle (auto)" and not report.partial
    torch.testing.assert_close(_features(again, x), expected)


# ----------------------------------------------------------------------------- own names

def test_own_name_formats_check_the_container(tmp_path):
    src = _randomise(create("resnet10t", 2), 13)
    st, pth = tmp_path / "w.safetensors", tmp_path / "w.pth"
    save_file(src.state_dict(), str(st))
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, pth)
    for path, fmt, auto in ((st, "safetensors", "safetensors (auto)"), (pth, "state_dict", "state_dict (auto)")):
        for name in (fmt, "timm", "auto"):
            report = load_init(create("resnet10t", 2), f"checkpoint:{path}", checkpoint_format=name)
            assert report.format == (auto if name == "auto" else name) and not report.partial
    with pytest.raises(InitError, match=r"w\.pth.*format safetensors reads safetensors files.*torch file"):
        load_init(create("resnet10t", 2), f"checkpoint:{pth}", checkpoint_format="safetensors")
    with pytest.raises(InitError, match="format state_dict reads torch files"):
        load_init(create("resnet10t", 2), f"checkpoint:{st}", checkpoint_format="state_dict")
    with pytest.raises(InitError, match="unknown checkpoint format 'retfound'.*auto, safetensors"):
        load_init(create("resnet10t", 2), f"checkpoint:{st}", checkpoint_format="retfound")


def test_auto_names_what_it_saw_when_no_layout_fits(tmp_path):
    path = tmp_path / "mystery.pth"
    torch.save({"encoder_q.conv.weight": torch.zeros(8, 3, 3, 3), "queue": torch.zeros(8, 16)}, path)
    with pytest.raises(InitError) as exc:
        load_init(create("resnet10t", 2), f"checkpoint:{path}")
    msg = str(exc.value)
    assert "does not fit resnet10t" in msg and "Read as format state_dict (auto)" in msg
    assert "No known foundation-model layout (retfound_mae" in msg and "flair" in msg
    assert "encoder_q (1)" in msg and "queue (8, 16)" in msg
    assert isinstance(exc.value.report, KeyReport) and exc.value.report.unexpected == ["encoder_q.conv.weight", "queue"]


def test_named_format_refuses_a_file_in_another_layout(tmp_path):
    _, path = _mae_checkpoint(tmp_path)
    with pytest.raises(InitError, match=r"not in the flair layout.*no vision_model\.model\.\* keys.*"
                                        r"decoder_blocks.*Detected from the keys: retfound_mae"):
        load_init(create("resnet50", 2), f"checkpoint:{path}", checkpoint_format="flair")
    with pytest.raises(InitError, match=r"not in the dinov2 layout.*mask_token of shape \(1, D\)"):
        load_init(timm.create_model("vit_large_patch16_224", img_size=64, **TINY_VIT), f"checkpoint:{path}",
                  checkpoint_format="dinov2")


# ----------------------------------------------------------------------------- wrong architecture

def _wrong_architecture_cases(tmp_path, flair_state):
    _, mae = _mae_checkpoint(tmp_path)
    wider = timm.create_model("vit_large_patch16_224", img_size=64, num_classes=2, embed_dim=48, depth=2, num_heads=2)
    flair = tmp_path / "flair_resnet.pth"
    torch.save(flair_state, flair)
    _, _, dino_state = _dinov2_state("dinov2_vits14")
    dino = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(dino_state, dino)
    green = timm.create_model("vit_small_patch14_reg4_dinov2", img_size=224, num_classes=2, depth=1)
    return [(mae, wider, "shape_mismatch", "arch vit_large_patch16_224"),
            (flair, create("resnet18", 2), "missing", "arch resnet50, img_size 512"),
            (dino, green, "shape_mismatch", "arch vit_base_patch14_dinov2")]


def test_wrong_architecture_checkpoints_fail_with_the_key_report(tmp_path, flair_model):
    for path, model, kind, authors in _wrong_architecture_cases(tmp_path, flair_model[1]):
        with pytest.raises(InitError, match="does not fit .*another architecture|matches only partly") as exc:
            load_init(model, f"checkpoint:{path}")
        report = exc.value.report
        assert isinstance(report, KeyReport) and report.partial and getattr(report, kind), (path, report.summary())
        assert report.format.endswith("(auto)") and report.format.split()[0] in formats.FORMATS
        assert f"unexpected {report.unexpected[:3]}"[:-1] in str(exc.value)  # the report, in the message
        assert f"Its authors' model: {authors}" in str(exc.value)


def test_registry_lists_every_published_format_with_its_source():
    assert formats.names()[0] == "auto"
    assert set(formats.FORMATS) == {"retfound_mae", "retfound_green", "dinov2", "flair", "paper_pickle",
                                    "safetensors", "state_dict", "timm"}
    for fmt in formats.FORMATS.values():
        assert fmt.description and fmt.published
    doc = (Path(__file__).parents[1] / "docs" / "checkpoint-formats.md").read_text()
    assert all(f"| `{name}` |" in doc for name in formats.FORMATS)  # one table row each

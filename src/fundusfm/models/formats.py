"""Checkpoint formats: released foundation-model files read as their authors publish them.

A *format* is the key layout of a published checkpoint.  Each one maps that layout onto
a timm model (the init's architecture) and notes in the :class:`~fundusfm.models.init.KeyReport`
what it dropped, renamed or left fresh on purpose; :func:`fundusfm.models.init.load_init`
then matches the result key by key.  ViT position embeddings are resampled to the model's
grid by timm's own ``checkpoint_filter_fn`` (``timm.layers.resample_abs_pos_embed``) when
the input size differs from the checkpoint's.

* ``retfound_mae``: RETFound / MAE pretraining checkpoints ``{"model": ..., "args": ...}``;
  decoder and mask token dropped; ``norm`` / ``fc_norm`` as RETFound's ``main_finetune.py``
  (a global-pool model: ``norm`` dropped, ``fc_norm`` fresh);
* ``retfound_green``: RETFound-Green, a timm ``vit_small_patch14_reg4_dinov2`` state dict at 392 px;
* ``dinov2``: DINOv2 hub files (``ls1.gamma``, 518-px grid, ``register_tokens``, ``mask_token``)
  and teacher checkpoints (``{"teacher": backbone.*}``), converted by timm's own DINOv2 conversion;
* ``flair``: FLAIR's torchvision ResNet50 under ``vision_model.model.``; text tower,
  projection and temperature dropped;
* ``paper_pickle``: the paper's release (arXiv 2408.08790), a pickled ``DataParallel``
  torchvision ResNet50 with the 2048->512->BN->ReLU head (``trust_pickle``);
* ``safetensors`` / ``state_dict``: a safetensors / torch file in the model's own (timm) key
  names (``module.`` prefixes stripped); ``timm``: the same, either container;
* ``auto``: the layout detected from the keys (:func:`detect`).

Where each layout is published, and the code it was read from, is in
``docs/checkpoint-formats.md`` and in each format's ``published`` field.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fundusfm.models.init import InitError, KeyReport

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass
class Checkpoint:
    """A checkpoint's tensors and what is known about where they came from."""

    state: dict[str, torch.Tensor]
    path: Path | None = None
    container: str = "memory"  # "safetensors" | "torch" | "memory" (weights built in this process)
    unpickled: bool = False  # a whole pickled module, unpickled under trust_pickle

    def has(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.state)


@dataclass(frozen=True)
class CheckpointFormat:
    """One published key layout and how it maps onto a timm model."""

    name: str
    description: str
    published: str  # where the authors publish the files, and the code that defines the layout
    convert: Callable[[Checkpoint, nn.Module, KeyReport], dict[str, torch.Tensor]]
    # why the checkpoint is *not* in this layout (None: it is); checked when the format is named
    layout_problem: Callable[[Checkpoint], str | None] = lambda ck: None
    container: str | None = None  # the file container the format requires (None: any)
    model: dict = field(default_factory=dict)  # the authors' model definition (arch, img_size, mean, std)


FORMATS: dict[str, CheckpointFormat] = {}


def register(fmt: CheckpointFormat) -> CheckpointFormat:
    FORMATS[fmt.name] = fmt
    return fmt


def names() -> tuple[str, ...]:
    """Every format name, ``auto`` first."""
    return (AUTO, *FORMATS)


# --------------------------------------------------------------------------- helpers

def file_container(path: Path) -> str:
    """``safetensors`` or ``torch`` from a file's first bytes (not its name)."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip archive / legacy pickle
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":  # u64 header length, then the JSON header
        return "safetensors"
    return "unknown"


def describe_keys(state: dict[str, torch.Tensor], examples: int = 6) -> str:
    """What a state dict holds, for error messages: top-level prefixes and a few keys."""
    tops = Counter(k.split(".", 1)[0] for k in state)
    top = ", ".join(f"{name} ({n})" for name, n in sorted(tops.items(), key=lambda kv: (-kv[1], kv[0]))[:10])
    more = f", ... {len(tops) - 10} more" if len(tops) > 10 else ""
    keys = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(state.items())[:examples])
    return f"{len(state)} tensors; top-level names: {top}{more}; first keys: {keys}"


def _take(state: dict, keep: Callable[[str], bool], report: KeyReport) -> dict[str, torch.Tensor]:
    """The entries ``keep`` accepts; the others are recorded as dropped on purpose."""
    out = {}
    for key, value in state.items():
        if keep(key):
            out[key] = value
        else:
            report.dropped.append(key)
    return out


def _strip(state: dict, prefix: str, report: KeyReport) -> dict[str, torch.Tensor]:
    """Keys under ``prefix`` with the prefix removed; every other key is dropped on purpose."""
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    report.dropped.extend(k for k in state if not k.startswith(prefix))
    report.renamed[prefix] = ""
    return out


def _vit_filter(state: dict, model: nn.Module, **kwargs) -> dict[str, torch.Tensor]:
    """timm's ``checkpoint_filter_fn`` for ViT targets: position embeddings (and patch
    embeddings) resampled to the model's grid; other models get the state unchanged.

    A checkpoint of another width or token layout cannot be resampled: it is passed on
    as it is, and the key report names what does not fit.
    """
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    if not isinstance(model, VisionTransformer):
        return state
    pos = state.get("pos_embed")
    if pos is not None and model.pos_embed is not None and pos.shape[-1] != model.pos_embed.shape[-1]:
        return state  # another embedding width: another architecture
    try:
        return checkpoint_filter_fn(dict(state), model, **kwargs)
    except (RuntimeError, ValueError, AssertionError) as exc:
        log.warning("could not resample pos_embed %s to the model's grid %s (%s): left for the key report",
                    tuple(pos.shape) if pos is not None else None, tuple(model.patch_embed.grid_size), exc)
        return state


def _mark_fresh(model: nn.Module, prefix: str, report: KeyReport) -> None:
    report.fresh.extend(k for k in model.state_dict() if k.startswith(prefix))


# --------------------------------------------------------------------------- own names

def _own_names(ck: Checkpoint, model: nn.Module, report: KeyReport) -> dict[str, torch.Tensor]:
    return _vit_filter(ck.state, model)


_OWN = "the model's own timm key names (what `model.state_dict()` of the init's arch writes)"

register(CheckpointFormat(
    name="safetensors",
    description=f"a safetensors file in {_OWN}",
    published="any safetensors export of a timm model (e.g. this project's own pretrain outputs)",
    convert=_own_names,
    container="safetensors",
))
register(CheckpointFormat(
    name="state_dict",
    description=f"a torch file holding a state dict in {_OWN}; nested under model/state_dict, "
    "`module.` prefixes stripped",
    published="torch.save(model.state_dict()) of a timm model",
    convert=_own_names,
    container="torch",
))
register(CheckpointFormat(
    name="timm",
    description=f"{_OWN}, either container; ViT position embeddings resampled by timm",
    published="timm's own pretrained weights (the imagenet init) or any timm state dict",
    convert=_own_names,
))


# --------------------------------------------------------------------------- RETFound MAE
# Layout: facebookresearch/mae models_mae.py (MaskedAutoencoderViT: encoder keys as timm's
# VisionTransformer plus decoder_embed, mask_token (1, 1, D_dec), decoder_pos_embed,
# decoder_blocks.*, decoder_norm, decoder_pred), saved by mae util/misc.py save_model as
# {"model", "optimizer", "epoch", "scaler", "args"}.  Fine-tuning: rmaphoh/RETFound_MAE
# main_finetune.py reads checkpoint["model"], drops a head of another shape, resamples the
# position embeddings with util/pos_embed.py interpolate_pos_embed (bicubic, no antialias)
# and loads with strict=False into models_vit.py's VisionTransformer, which with global_pool
# (the default) deletes `norm` and adds a fresh `fc_norm`: the checkpoint's norm is unused.

MAE_DECODER_PREFIXES = ("decoder_", "mask_token")


def _mae_problem(ck: Checkpoint) -> str | None:
    if not (ck.has("blocks.") and ck.has("patch_embed.proj.") and "pos_embed" in ck.state):
        return "no ViT encoder keys (blocks.*, patch_embed.proj.*, pos_embed)"
    return None


def _retfound_mae(ck: Checkpoint, model: nn.Module, report: KeyReport) -> dict[str, torch.Tensor]:
    state = _take(ck.state, lambda k: not k.startswith(MAE_DECODER_PREFIXES), report)
    target = model.state_dict()
    if "norm.weight" in state and "norm.weight" not in target and "fc_norm.weight" in target:
        # a global-average-pool model (RETFound's default): its fc_norm starts fresh, as in
        # RETFound's main_finetune.py (missing keys asserted == head + fc_norm)
        state = _take(state, lambda k: not k.startswith("norm."), report)
        _mark_fresh(model, "fc_norm.", report)
    return _vit_filter(state, model, antialias=False)  # interpolate_pos_embed: plain bicubic


register(CheckpointFormat(
    name="retfound_mae",
    description="RETFound / MAE pretraining checkpoint {'model': ...}: decoder and mask token dropped; "
    "a global-pool model's fc_norm starts fresh (the checkpoint's norm unused), a cls-token model loads norm",
    published="RETFound_cfp_weights.pth / RETFound_oct_weights.pth (github.com/rmaphoh/RETFound_MAE, "
    "huggingface.co/YukunZhou/RETFound_mae_*); layout: facebookresearch/mae models_mae.py, util/misc.py",
    convert=_retfound_mae,
    layout_problem=_mae_problem,
    model={"arch": "vit_large_patch16_224", "img_size": 224, "mean": "imagenet", "std": "imagenet",
           "global_pool": "avg (RETFound main_finetune.py default)"},
))


# --------------------------------------------------------------------------- DINOv2
# Layout: facebookresearch/dinov2 dinov2/models/vision_transformer.py DinoVisionTransformer
# (cls_token, pos_embed over 1 + (518/14)^2 tokens, register_tokens for the *_reg variants,
# mask_token (1, D), blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1|w12,mlp.fc2|w3,
# ls2.gamma}, norm); hub files dinov2/hub/backbones.py (block_chunks=0, strict load);
# teacher checkpoints dinov2/train/train.py do_test: {"teacher": {"backbone.*", "dino_head.*",
# "ibot_head.*"}}, read that way by rmaphoh/RETFound_MAE main_finetune.py for RETFound-DINOv2.
# The conversion itself is timm's (vision_transformer.py checkpoint_filter_fn ->
# _convert_dinov2: register_tokens -> reg_token, pos_embed[:, 0] folded into cls_token,
# w12/w3 -> fc1/fc2), triggered there by the mask_token key.

DINO_HEADS = ("dino_head.", "ibot_head.")


def _dinov2_state(ck: Checkpoint, report: KeyReport) -> dict[str, torch.Tensor]:
    state = ck.state
    if "backbone.mask_token" in state or "backbone.cls_token" in state:  # a teacher checkpoint
        state = _strip(state, "backbone.", report)
    return state


def _dinov2_problem(ck: Checkpoint) -> str | None:
    state = ck.state
    if "backbone.mask_token" in state or "backbone.cls_token" in state:
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    mask = state.get("mask_token")
    if mask is None or mask.ndim != 2:
        return ("no DINOv2 mask_token of shape (1, D) (every DinoVisionTransformer has one, "
                "also under backbone. in teacher checkpoints)")
    return None


def _dinov2(ck: Checkpoint, model: nn.Module, report: KeyReport) -> dict[str, torch.Tensor]:
    state = _dinov2_state(ck, report)
    if "mask_token" in state:
        report.dropped.append("mask_token")  # popped by timm's _convert_dinov2
    if "register_tokens" in state:
        report.renamed["register_tokens"] = "reg_token (pos_embed[:, 0] folded into cls_token)"
    if any(".mlp.w12." in k for k in state):
        report.renamed["mlp.w12/mlp.w3"] = "mlp.fc1/mlp.fc2"
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        return {k: v for k, v in state.items() if k != "mask_token"}  # the key report will say why
    return _vit_filter(state, model)


register(CheckpointFormat(
    name="dinov2",
    description="DINOv2 hub checkpoint (ls1.gamma, 518-px grid, register_tokens, mask_token) or teacher "
    "checkpoint {'teacher': backbone.*}; converted by timm's own DINOv2 conversion, dino/ibot heads dropped",
    published="dl.fbaipublicfiles.com/dinov2/<model>/<model>_pretrain.pth (github.com/facebookresearch/dinov2, "
    "dinov2/hub/backbones.py); RETFound-DINOv2 teacher files huggingface.co/YukunZhou/RETFound_dinov2_*",
    convert=_dinov2,
    layout_problem=_dinov2_problem,
    model={"arch": "vit_base_patch14_dinov2 (vit_*_reg4_dinov2 for *_reg files)", "img_size": 518,
           "mean": "imagenet", "std": "imagenet"},
))


# --------------------------------------------------------------------------- RETFound-Green
# Layout: justinengelmann/RETFound_Green README.md: timm.create_model(
# 'vit_small_patch14_reg4_dinov2', img_size=(392, 392), num_classes=0) loads the released
# retfoundgreen_statedict.pth strictly: timm's own names (cls_token, reg_token (1, 4, 384),
# pos_embed over the 28x28 patch grid only (no_embed_class), blocks.N.ls1.gamma, norm), no
# head; normalisation mean = std = 0.5.  Its pretraining (Training_and_eval_code/
# TokenReconstructionPretraining.ipynb) adds projector.* and ls_projector.* to the encoder:
# dropped if a file still has them.

GREEN_EXTRAS = ("projector.", "ls_projector.")
GREEN_SHAPES = {"reg_token": (1, 4, 384), "patch_embed.proj.weight": (384, 3, 14, 14)}


def _green_problem(ck: Checkpoint) -> str | None:
    wrong = {k: (tuple(ck.state[k].shape) if k in ck.state else None) for k in GREEN_SHAPES
             if k not in ck.state or tuple(ck.state[k].shape) != GREEN_SHAPES[k]}
    if wrong:
        return f"not a ViT-S/14 with 4 registers: expected {GREEN_SHAPES}, found {wrong}"
    if not any(k.endswith(".ls1.gamma") for k in ck.state):
        return "no layer-scale keys (blocks.N.ls1.gamma)"
    if "mask_token" in ck.state or "register_tokens" in ck.state:
        return "DINOv2 hub names (mask_token / register_tokens): use format dinov2"
    return None


def _retfound_green(ck: Checkpoint, model: nn.Module, report: KeyReport) -> dict[str, torch.Tensor]:
    state = _take(ck.state, lambda k: not k.startswith(GREEN_EXTRAS), report)
    return _vit_filter(state, model)


register(CheckpointFormat(
    name="retfound_green",
    description="RETFound-Green: a timm vit_small_patch14_reg4_dinov2 state dict at 392 px (timm names, "
    "no head); pretraining projector keys dropped if present",
    published="retfoundgreen_statedict.pth, github.com/justinengelmann/RETFound_Green releases v0.1",
    convert=_retfound_green,
    layout_problem=_green_problem,
    model={"arch": "vit_small_patch14_reg4_dinov2", "img_size": 392, "mean": [0.5, 0.5, 0.5],
           "std": [0.5, 0.5, 0.5], "global_pool": "avg over patch tokens after norm (README)"},
))


# --------------------------------------------------------------------------- FLAIR
# Layout: jusiro/FLAIR flair/modeling/model.py: FLAIRModel.vision_model = VisionModel with
# .model = torchvision.models.resnet50 (fc = Identity) and .projection_head_vision.projection
# (Linear 2048 -> 512, no bias); .text_model (Bio_ClinicalBERT under text_model.model.,
# projection_head_text); logit_scale.  Saved as torch.save(self.state_dict()) (fit) and as
# model.safetensors by huggingface_hub's PyTorchModelHubMixin (FLAIRModel.from_pretrained
# ("jusiro2/FLAIR")); both hold the same keys.  Inputs: image / 255, no mean/std, 512 px.

FLAIR_VISION = "vision_model.model."


def _flair_problem(ck: Checkpoint) -> str | None:
    return None if ck.has(FLAIR_VISION) else f"no {FLAIR_VISION}* keys (FLAIR's vision encoder)"


def _flair(ck: Checkpoint, model: nn.Module, report: KeyReport) -> dict[str, torch.Tensor]:
    return _strip(ck.state, FLAIR_VISION, report)


register(CheckpointFormat(
    name="flair",
    description="FLAIR: its torchvision ResNet50 vision encoder (vision_model.model.*); text tower, "
    "projection heads and logit_scale dropped",
    published="flair_resnet.pth (github.com/jusiro/FLAIR, Google Drive link in flair/modeling/constants.py) "
    "and huggingface.co/jusiro2/FLAIR model.safetensors",
    convert=_flair,
    layout_problem=_flair_problem,
    model={"arch": "resnet50", "img_size": 512, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
))


# --------------------------------------------------------------------------- the paper's release
# Layout: Jang-Boa/Research-Foundation-Retina Downstream_Task/utils/model.py ResNetModel:
# torchvision resnet50, fc = Sequential(Linear(2048, 512), BatchNorm1d(512), ReLU(),
# Linear(512, n)), wrapped in nn.DataParallel; Downstream_Task/inference.ipynb reads it with
# torch.load(path) as a whole module.  read_checkpoint unpickles it only with trust_pickle,
# strips `module.` and converts it once to safetensors; the keys are then timm's resnet50
# names with the paper head (fc.0, fc.1, fc.3), as fundusfm's head="paper" builds it.

PAPER_HEAD = ("fc.0.weight", "fc.1.running_var", "fc.3.weight")


def _paper_problem(ck: Checkpoint) -> str | None:
    missing = [k for k in ("conv1.weight", "layer4.0.conv1.weight", *PAPER_HEAD) if k not in ck.state]
    if missing:
        return f"not a ResNet with the paper's 2048->512->BN->ReLU head: missing {missing}"
    return None


def _paper_pickle(ck: Checkpoint, model: nn.Module, report: KeyReport) -> dict[str, torch.Tensor]:
    return dict(ck.state)


register(CheckpointFormat(
    name="paper_pickle",
    description="the paper's release: a pickled DataParallel torchvision ResNet50 with the "
    "2048->512->BN->ReLU head (needs trust_pickle; converted once to safetensors)",
    published="resnet50_512_{Fundus,ImageNet+Fundus}.pth (arXiv 2408.08790), Google Drive links in the README "
    "of github.com/Jang-Boa/Research-Foundation-Retina from 2024-07 (commit 646e634) to 2024-09 (11b4fd7); "
    "its README now says the model is released after publication",
    convert=_paper_pickle,
    layout_problem=_paper_problem,
    model={"arch": "resnet50", "head": "paper", "img_size": 512},
))


# --------------------------------------------------------------------------- detection

def detect(ck: Checkpoint) -> str:
    """The format of ``ck`` from its keys: a known foundation-model layout, else the model's
    own names in the file's container (the key report then says whether they fit)."""
    state = ck.state
    mask = state.get("mask_token")
    if ck.has(FLAIR_VISION):
        return "flair"
    if ck.has("decoder_") or (mask is not None and mask.ndim == 3):  # MAE's mask token is (1, 1, D_dec)
        return "retfound_mae"
    if _dinov2_problem(ck) is None:
        return "dinov2"
    if ck.unpickled and _paper_problem(ck) is None:
        return "paper_pickle"
    if _green_problem(ck) is None and not ck.has("head."):
        return "retfound_green"
    return {"safetensors": "safetensors", "torch": "state_dict"}.get(ck.container, "timm")


OWN_NAME_FORMATS = ("safetensors", "state_dict", "timm")


def convert(
    ck: Checkpoint, model: nn.Module, report: KeyReport, fmt: str = AUTO
) -> dict[str, torch.Tensor]:
    """Map ``ck`` in format ``fmt`` (or the detected one) onto ``model``'s key names.

    Records the format, and what was dropped, renamed or left fresh on purpose, in ``report``.
    A named format whose layout the checkpoint does not have raises :class:`InitError`
    listing what the checkpoint holds.
    """
    where = ck.path if ck.path is not None else report.source
    if fmt not in names():
        raise InitError(f"{where}: unknown checkpoint format {fmt!r}; choose one of {', '.join(names())}")
    # DataParallel / DDP prefixes, whatever the container
    if ck.state and all(k.startswith("module.") for k in ck.state):
        ck = Checkpoint({k[len("module."):]: v for k, v in ck.state.items()}, ck.path, ck.container, ck.unpickled)
        report.renamed["module."] = ""
    name = detect(ck) if fmt == AUTO else fmt
    spec = FORMATS[name]
    if fmt != AUTO:
        if spec.container and ck.container not in (spec.container, "memory"):
            raise InitError(
                f"{where}: format {name} reads {spec.container} files, but this is a {ck.container} file; "
                f"use format {'safetensors' if ck.container == 'safetensors' else 'state_dict'} (or auto)"
            )
        problem = spec.layout_problem(ck)
        if problem:
            raise InitError(
                f"{where} is not in the {name} layout ({spec.description}): {problem}. "
                f"It holds {describe_keys(ck.state)}. Detected from the keys: {detect(ck)}."
            )
    report.format = name if fmt != AUTO else f"{name} (auto)"
    log.info("checkpoint %s: format %s", where, report.format)
    return spec.convert(ck, model, report)


def checkpoint_from(state: dict[str, torch.Tensor], path: str | Path | None, unpickled: bool) -> Checkpoint:
    """A :class:`Checkpoint` for tensors read from ``path`` (``None``: built in memory)."""
    if path is None:
        return Checkpoint(state)
    path = Path(path)
    return Checkpoint(state, path, file_container(path), unpickled)


def finish_report(report: KeyReport, pre: KeyReport) -> None:
    """Carry the format's notes (``pre``) into the key report of the match: the format,
    the keys dropped / renamed on purpose, and model keys left fresh on purpose (which are
    then not *missing*)."""
    report.format, report.dropped, report.renamed = pre.format, pre.dropped, pre.renamed
    fresh = set(pre.fresh)
    report.fresh = [k for k in report.missing if k in fresh]
    report.missing = [k for k in report.missing if k not in fresh]


def seen_note(report: KeyReport, state: dict[str, torch.Tensor]) -> str:
    """For a load that does not fit: the format it was read as and what the file holds."""
    note = f" Read as format {report.format}."
    authors = FORMATS.get((report.format or "").split(" ")[0])
    if authors is not None and authors.model:
        note += f" Its authors' model: {', '.join(f'{k} {v}' for k, v in authors.model.items())}."
    if report.format in {f"{n} (auto)" for n in OWN_NAME_FORMATS}:
        known = ", ".join(n for n in FORMATS if n not in OWN_NAME_FORMATS)
        note += f" No known foundation-model layout ({known}) matched its keys; name the format if you know it."
    return f"{note} The checkpoint holds {describe_keys(state)}."

"""Model factory: a timm backbone by name with either timm's head or the paper's head.

The paper's head (arXiv 2408.08790) replaces ResNet50's ``fc`` with
``Linear(2048, 512) -> BatchNorm1d(512) -> ReLU -> Linear(512, classes)``; here 2048 is
the backbone's feature width, whatever the architecture.  The head is an
``nn.Sequential`` installed at timm's classifier attribute, so the state-dict keys
(``fc.0``, ``fc.1``, ``fc.3`` for ResNets) are those of the paper's released checkpoint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import timm
import torch
from torch import nn

from fundusfm.train.config import NORMALISATIONS, RESERVED_MODEL_ARGS

log = logging.getLogger(__name__)

HEADS = ("timm", "paper")
# timm.create_model arguments fundusfm sets itself (RESERVED_MODEL_ARGS, fundusfm.train.config) are never model_args
PAPER_HIDDEN = 512
IMAGENET_WEIGHTS_ENV = "FUNDUSFM_IMAGENET_WEIGHTS"


class ImageNetWeightsUnavailable(RuntimeError):
    """No ImageNet weights could be found offline for the requested architecture."""


class ArchitectureArgumentError(ValueError):
    """A timm architecture does not take a hyper-parameter it was given (``drop_path_rate``...)."""


def paper_head(in_features: int, num_classes: int, hidden: int = PAPER_HIDDEN) -> nn.Sequential:
    """The paper's classification head: Linear -> BatchNorm1d -> ReLU -> Linear."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )


def classifier_name(model: nn.Module) -> str:
    """Dotted attribute path of the model's classifier (``fc``, ``head``, ``head.fc``...)."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if not name:
        raise ValueError(f"{type(model).__name__} declares no classifier in its timm pretrained_cfg")
    return name


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes that belong to the classification head."""
    return (classifier_name(model) + ".",)


def _set_module(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, leaf = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)


def _classifier_in_features(model: nn.Module) -> int:
    clf = model.get_submodule(classifier_name(model))
    if isinstance(clf, nn.Linear):
        return clf.in_features
    # mobilenetv3 & co. feed the classifier from a hidden projection, not num_features
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def _timm_create(arch: str, num_classes: int, img_size: int | None, **kwargs) -> nn.Module:
    """``timm.create_model`` passing ``img_size`` to the architectures that take it (ViTs)."""
    if img_size is not None:
        try:
            return timm.create_model(arch, num_classes=num_classes, img_size=img_size, **kwargs)
        except TypeError:
            pass  # CNNs are size-agnostic and reject the argument
    try:
        return timm.create_model(arch, num_classes=num_classes, **kwargs)
    except TypeError as exc:  # e.g. drop_path_rate for an architecture without stochastic depth
        given = sorted(k for k in kwargs if k not in ("pretrained", "pretrained_cfg_overlay"))
        raise ArchitectureArgumentError(f"timm architecture {arch!r} does not take the hparam(s) {given} ({exc}); "
                         "leave them out (0 / unset) for this architecture") from None


def resolve_imagenet_file(imagenet_weights: str | os.PathLike | None) -> Path | None:
    """Local ImageNet weights override: the argument, else ``$FUNDUSFM_IMAGENET_WEIGHTS``."""
    src = imagenet_weights or os.environ.get(IMAGENET_WEIGHTS_ENV) or None
    if src is None:
        return None
    path = Path(src).expanduser()
    if not path.is_file():
        raise ImageNetWeightsUnavailable(
            f"ImageNet weights file {path} does not exist (from "
            f"{'hparam imagenet_weights' if imagenet_weights else '$' + IMAGENET_WEIGHTS_ENV})"
        )
    return path


def create(
    arch: str,
    num_classes: int,
    head: str = "timm",
    pretrained_init: str = "random",
    *,
    img_size: int | None = None,
    imagenet_weights: str | os.PathLike | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    model_args: dict | None = None,
) -> nn.Module:
    """Create a timm backbone ``arch`` with ``num_classes`` outputs and the chosen head.

    ``model_args``: further keyword arguments of ``timm.create_model`` that are part of
    the model's definition (e.g. ``{"global_pool": "avg"}``, RETFound's fine-tuning pool).

    ``pretrained_init`` is ``"random"`` or ``"imagenet"``; ImageNet weights come through
    timm's own pretrained loading (HF cache, ``HF_HUB_OFFLINE``), or from a local file
    (``imagenet_weights`` or ``$FUNDUSFM_IMAGENET_WEIGHTS``).  Without reachable weights
    this raises :class:`ImageNetWeightsUnavailable`; it never falls back to random.
    Other init sources (checkpoints) are applied afterwards by
    :func:`fundusfm.models.init.load_init`.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {HEADS}")
    if pretrained_init not in ("random", "imagenet"):
        raise ValueError(
            f"create() builds 'random' or 'imagenet' models, got {pretrained_init!r}; "
            "apply checkpoints with fundusfm.models.init.load_init"
        )
    if arch not in timm.list_models():
        raise ValueError(f"unknown timm architecture {arch!r} (see timm.list_models())")
    reserved = sorted(set(model_args or {}) & RESERVED_MODEL_ARGS)
    if reserved:
        raise ValueError(f"model_args {reserved}: set by fundusfm itself (use img_size / the task / the init)")
    kwargs: dict = dict(model_args or {})
    if drop_rate:
        kwargs["drop_rate"] = drop_rate
    if drop_path_rate:  # stochastic depth (ViTs, ResNets, ...): the recipes of ViT fine-tuning use it
        kwargs["drop_path_rate"] = drop_path_rate
    if pretrained_init == "imagenet":
        model = _create_imagenet(arch, num_classes, img_size, imagenet_weights, kwargs)
    else:
        model = _timm_create(arch, num_classes, img_size, **kwargs)
    if head == "paper":
        # the new head is freshly initialised in both cases: pretrained heads are 1000-way
        _set_module(model, classifier_name(model), paper_head(_classifier_in_features(model), num_classes))
    return model


def _create_imagenet(arch, num_classes, img_size, imagenet_weights, kwargs) -> nn.Module:
    local = resolve_imagenet_file(imagenet_weights)
    if local is not None:
        kwargs = dict(kwargs, pretrained_cfg_overlay={"file": str(local)})
        log.info("ImageNet weights for %s from local file %s", arch, local)
    try:
        return _timm_create(arch, num_classes, img_size, pretrained=True, **kwargs)
    except (ImageNetWeightsUnavailable, ArchitectureArgumentError):
        raise
    except Exception as exc:  # timm / huggingface_hub raise many types when offline
        raise ImageNetWeightsUnavailable(
            f"could not load ImageNet weights for {arch!r}: {type(exc).__name__}: {exc}\n"
            f"Provide them offline: save the state dict of timm.create_model({arch!r}, "
            f"pretrained=True) to a .safetensors/.pth file and pass it as hparam "
            f"'imagenet_weights' or in ${IMAGENET_WEIGHTS_ENV}, or pre-populate the "
            "Hugging Face cache (HF_HOME) and set HF_HUB_OFFLINE=1."
        ) from exc


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def default_mean_std(model: nn.Module) -> tuple[list[float], list[float]]:
    """Normalisation constants the backbone was designed for (timm's data config)."""
    cfg = timm.data.resolve_data_config({}, model=model)
    return [float(x) for x in cfg["mean"]], [float(x) for x in cfg["std"]]




def input_norm(model: nn.Module | None, mean=None, std=None) -> tuple[list[float], list[float]]:
    """The mean and std a model's inputs are normalised with: each given as three numbers
    or a name of :data:`NORMALISATIONS` (``mean: imagenet``), else (``None``) the
    architecture's own timm default (``model`` may be ``None`` when both are given)."""

    def one(value, which: int, what: str) -> list[float]:
        if value is None:
            if model is None:
                raise ValueError(f"{what} not given and no model to take its timm default from")
            return default_mean_std(model)[which]
        if isinstance(value, str):
            if value not in NORMALISATIONS:
                raise ValueError(f"{what} {value!r}: use 3 numbers or one of {sorted(NORMALISATIONS)}")
            return [float(x) for x in NORMALISATIONS[value][which]]
        vals = [float(x) for x in value]
        if len(vals) != 3 or (which == 1 and min(vals) <= 0):
            raise ValueError(f"{what} must be 3 numbers (RGB){' > 0' if which else ''}, got {value!r}")
        return vals

    return one(mean, 0, "mean"), one(std, 1, "std")


def build(hp: dict, num_outputs: int) -> nn.Module:
    """The (randomly initialised) model of resolved hyper-parameters ``hp``: its ``arch``,
    ``head``, ``img_size``, ``model_args``, ``drop_rate`` and ``drop_path_rate``.
    Training, feature extraction and model facts all build a run's model here."""
    return create(hp["arch"], num_outputs, hp["head"], "random", img_size=hp["img_size"],
                  drop_rate=hp.get("drop_rate") or 0.0, drop_path_rate=hp.get("drop_path_rate") or 0.0,
                  model_args=hp.get("model_args"))


@torch.no_grad()
def feature_dim(model: nn.Module) -> int:
    """Input width of the classification head."""
    return _classifier_in_features(model) if not isinstance(
        model.get_submodule(classifier_name(model)), nn.Sequential
    ) else model.get_submodule(classifier_name(model))[0].in_features

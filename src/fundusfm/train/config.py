"""Training hyper-parameters: defaults and validation (the task is :mod:`fundusfm.task`)."""

from __future__ import annotations

import copy
import math

# Defaults follow the paper where it says (ResNet50, 512 px, its head) and common
# fine-tuning practice elsewhere.  Every key a run may set is listed here.
DEFAULT_AUGMENT: dict = {
    "hflip": 0.5,  # probability
    "vflip": 0.5,
    "rotation": 30.0,  # degrees, uniform in [-r, r]; black fill like the outside of the FOV
    "scale_min": 0.8,  # random resized crop area fraction (processed images: FOV fills the square)
    "ratio": [0.9, 1.1],
    "brightness": 0.2,
    "contrast": 0.2,
    "saturation": 0.1,
    "hue": 0.02,
}

DEFAULT_HPARAMS: dict = {
    "arch": "resnet50",
    "head": "paper",  # 'timm' | 'paper'
    "img_size": 512,
    "batch_size": 64,  # global batch (split across DDP ranks)
    "eval_batch_size": None,  # default: 2 x batch_size
    "epochs": 30,
    "lr": 1e-4,
    "min_lr": 1e-6,
    "weight_decay": 0.01,
    "warmup_epochs": 1.0,
    "layer_decay": None,  # e.g. 0.75 for layer-wise lr decay (timm param groups)
    "label_smoothing": 0.0,
    "drop_rate": 0.0,
    "drop_path_rate": 0.0,  # stochastic depth (ViT fine-tuning recipes use 0.1-0.2)
    "model_args": {},  # further timm.create_model arguments of the model definition, e.g. {global_pool: avg}
    "mean": None,  # input normalisation: 3 numbers or imagenet | inception | clip | none (None: the arch's timm default)
    "std": None,
    "mode": "full",  # 'full' | 'linear_probe'
    "carry_head": "none",  # 'none' | 'hidden': hidden head layers of a checkpoint (the final layer is always fresh)
    "val_labels": "fraction",  # 'fraction': label fractions shrink validation too | 'full': keep it whole
    "val_min_patients": 2,  # floor of validation patients per stratum under a label fraction
    "imbalance": "pos_weight",  # 'none' | 'pos_weight' | 'balanced_sampler'
    "monitor": "auroc",  # validation metric selecting the best epoch
    "patience": 10,  # early stopping: epochs without improvement (None = off)
    "augment": DEFAULT_AUGMENT,
    "augment_device": "auto",  # 'auto' (gpu on CUDA, else cpu) | 'cpu' (loader workers) | 'gpu' (batched)
    "amp": "bf16",  # 'bf16' | 'none' (autocast on CUDA only)
    "channels_last": True,
    "compile": False,
    "sync_bn": True,  # SyncBatchNorm under multi-GPU DDP (CUDA only)
    "grad_clip": None,
    "imagenet_weights": None,  # local file override for timm's ImageNet weights
    "deterministic": False,  # torch.use_deterministic_algorithms (CPU runs are seeded anyway)
    "log_every": 50,  # steps between progress logs / NaN checks
}

# Named input normalisations of hparams mean/std (images scaled to [0, 1] first): timm's
# constants (timm.data IMAGENET_DEFAULT_*, IMAGENET_INCEPTION_*, OPENAI_CLIP_*; a test
# checks they are equal), written out so that reading a config or a table needs no torch.
NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}

# timm.create_model arguments fundusfm sets itself: never part of model_args (refused
# before any job; models.factory.create refuses them too)
RESERVED_MODEL_ARGS = frozenset({"num_classes", "img_size", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                                 "drop_rate", "drop_path_rate", "checkpoint_path"})

# the type and range of every scalar hyper-parameter: (kind, low, high, low inclusive,
# allows None); kinds: int (never a boolean), real (a finite number, never a boolean), bool
_NUMBERS: dict[str, tuple] = {
    "img_size": ("int", 1, None, True, False),
    "batch_size": ("int", 1, None, True, False),
    "eval_batch_size": ("int", 1, None, True, True),
    "epochs": ("int", 1, None, True, False),
    "lr": ("real", 0.0, None, False, False),
    "min_lr": ("real", 0.0, None, True, False),
    "weight_decay": ("real", 0.0, None, True, False),
    "warmup_epochs": ("real", 0.0, None, True, False),
    "layer_decay": ("real", 0.0, 1.0, False, True),
    "label_smoothing": ("real", 0.0, 1.0, True, False),
    "drop_rate": ("real", 0.0, 1.0, True, False),
    "drop_path_rate": ("real", 0.0, 1.0, True, False),
    "val_min_patients": ("int", 0, None, True, False),
    "patience": ("int", 1, None, True, True),
    "grad_clip": ("real", 0.0, None, False, True),
    "log_every": ("int", 0, None, True, False),
    "channels_last": ("bool",), "compile": ("bool",), "sync_bn": ("bool",), "deterministic": ("bool",),
}
_AUGMENT_NUMBERS: dict[str, tuple] = {
    "hflip": (0.0, 1.0), "vflip": (0.0, 1.0), "rotation": (0.0, 180.0), "scale_min": (1e-6, 1.0),
    "brightness": (0.0, 1.0), "contrast": (0.0, 1.0), "saturation": (0.0, 1.0), "hue": (0.0, 0.5),
}


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number_problem(key: str, v, rule: tuple) -> str | None:
    kind = rule[0]
    if kind == "bool":
        return None if isinstance(v, bool) else f"hparams {key} must be true or false, got {v!r}"
    _, low, high, low_incl, nullable = rule
    if v is None and nullable:
        return None
    what = "an integer" if kind == "int" else "a finite number"
    if kind == "int" and (isinstance(v, bool) or not isinstance(v, int)):
        return f"hparams {key} must be {what}{' or null' if nullable else ''}, got {v!r}"
    if kind == "real" and not _is_real(v):
        return f"hparams {key} must be {what}{' or null' if nullable else ''}, got {v!r}"
    if (v < low if low_incl else v <= low) or (high is not None and v > high):
        rng = f"{'[' if low_incl else '('}{low}, {high if high is not None else 'inf'}{']' if high is not None else ')'}"
        return f"hparams {key} must be in {rng}, got {v!r}"
    return None


def _norm_problem(key: str, v) -> str | None:
    if v is None or (isinstance(v, str) and v in NORMALISATIONS):
        return None
    if isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_real(x) for x in v):
        if key == "std" and not all(x > 0 for x in v):
            return f"hparams std must be > 0 per channel, got {list(v)}"
        return None
    return f"hparams {key} must be 3 finite numbers or one of {sorted(NORMALISATIONS)}, got {v!r}"


HPARAM_CHOICES = {
    "head": ("timm", "paper"),
    "mode": ("full", "linear_probe"),
    "carry_head": ("none", "hidden"),
    "val_labels": ("fraction", "full"),
    "imbalance": ("none", "pos_weight", "balanced_sampler"),
    "amp": ("bf16", "none"),
    "augment_device": ("auto", "cpu", "gpu"),
    "monitor": ("auroc", "accuracy", "balanced_accuracy", "kappa", "f1", "loss"),
}

def resolve_hparams(given: dict | None) -> dict:
    """Defaults overlaid with ``given``; unknown keys and bad values raise ValueError."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(DEFAULT_HPARAMS))
    if unknown:
        raise ValueError(f"unknown hparams key(s) {unknown}; known keys: {sorted(DEFAULT_HPARAMS)}")
    hp = copy.deepcopy(DEFAULT_HPARAMS)
    aug = given.pop("augment", None)
    if aug is not None:
        if not isinstance(aug, dict):
            raise ValueError(f"hparams 'augment' must be an object, got {aug!r}")
        bad = sorted(set(aug) - set(DEFAULT_AUGMENT))
        if bad:
            raise ValueError(f"unknown hparams augment key(s) {bad}; known: {sorted(DEFAULT_AUGMENT)}")
        hp["augment"].update(aug)
    hp.update(given)
    if not isinstance(hp["model_args"], dict):
        raise ValueError(f"hparams model_args must be an object (timm.create_model arguments), got {hp['model_args']!r}")
    reserved = sorted(set(hp["model_args"]) & RESERVED_MODEL_ARGS)
    if reserved:
        raise ValueError(f"hparams model_args {reserved}: set by fundusfm itself (the input size is img_size, the "
                         "outputs come from the task, weights from the init, dropout from drop_rate / "
                         "drop_path_rate); remove them")
    for key, choices in HPARAM_CHOICES.items():
        if hp[key] not in choices:
            raise ValueError(f"hparams {key}={hp[key]!r}: choose one of {choices}")
    for key, rule in _NUMBERS.items():
        problem = _number_problem(key, hp[key], rule)
        if problem:
            raise ValueError(problem)
    for key in ("mean", "std"):
        problem = _norm_problem(key, hp[key])
        if problem:
            raise ValueError(problem)
    if hp["imagenet_weights"] is not None and not (isinstance(hp["imagenet_weights"], str) and hp["imagenet_weights"]):
        raise ValueError(f"hparams imagenet_weights must be a file path or null, got {hp['imagenet_weights']!r}")
    aug = hp["augment"]
    for key, (low, high) in _AUGMENT_NUMBERS.items():
        v = aug[key]
        if not _is_real(v) or not low <= v <= high:
            raise ValueError(f"hparams augment.{key} must be a finite number in [{low:g}, {high:g}], got {v!r}")
    r = aug["ratio"]
    if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(_is_real(x) and x > 0 for x in r) and r[0] <= r[1]):
        raise ValueError(f"hparams augment.ratio must be [low, high] with 0 < low <= high, got {r!r}")
    return hp

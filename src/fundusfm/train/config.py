"""Training hyper-parameters: defaults and validation (the task is :mod:`fundusfm.task`)."""

from __future__ import annotations

import copy

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
    for key, choices in HPARAM_CHOICES.items():
        if hp[key] not in choices:
            raise ValueError(f"hparams {key}={hp[key]!r}: choose one of {choices}")
    for key in ("img_size", "batch_size", "epochs"):
        if not isinstance(hp[key], int) or hp[key] < 1:
            raise ValueError(f"hparams {key} must be a positive integer, got {hp[key]!r}")
    if hp["lr"] <= 0:
        raise ValueError(f"hparams lr must be > 0, got {hp['lr']}")
    if hp["layer_decay"] is not None and not 0 < hp["layer_decay"] <= 1:
        raise ValueError(f"hparams layer_decay must be in (0, 1], got {hp['layer_decay']}")
    return hp

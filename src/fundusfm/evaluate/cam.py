"""Class activation maps (grad-cam package) and per-class case galleries.

For each class (binary: the positive class; multilabel: each label) the gallery shows the
most confident true positives, the most confident false positives and the most
confidently missed false negatives, with the CAM overlaid inside the field of view.
Selection is deterministic: sorted by probability, ties broken by dataset and image id.

Files written by :func:`run_cam` into ``out_dir``: ``selection.csv`` (the chosen cases)
and ``<method>_<class>.png`` per CAM method and class.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from pytorch_grad_cam import (EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM,  # noqa: E402
                              ScoreCAM, XGradCAM)
from pytorch_grad_cam.utils.image import show_cam_on_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from scipy import ndimage  # noqa: E402
from torch import nn  # noqa: E402

from fundusfm.fileio import write_csv  # noqa: E402
from fundusfm.task import TaskSpec, read_predictions  # noqa: E402

log = logging.getLogger(__name__)

METHODS: dict[str, type] = {
    "gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "scorecam": ScoreCAM, "eigencam": EigenCAM,
    "layercam": LayerCAM, "xgradcam": XGradCAM, "hirescam": HiResCAM,
}
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "scorecam": "Score-CAM",
                "eigencam": "EigenCAM", "layercam": "LayerCAM", "xgradcam": "XGrad-CAM", "hirescam": "HiResCAM"}
GROUPS = ("TP", "FP", "FN")
# pixels darker than this (max over RGB, 0-255) are outside the processed FOV (black)
FOV_THRESHOLD = 10


# --- model plumbing ------------------------------------------------------------------------

def _vit_reshape(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    n_prefix = int(getattr(model, "num_prefix_tokens", 1))

    def reshape(t: torch.Tensor) -> torch.Tensor:
        # tokens (B, N, C) -> feature map (B, C, h, w), dropping class / register tokens
        t = t[:, n_prefix:, :]
        side = int(round(math.sqrt(t.shape[1])))
        return t.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

    return reshape


def target_layers(model: nn.Module) -> tuple[list[nn.Module], Callable | None]:
    """The layer CAMs are taken from, and the reshape transform it needs.

    ViTs (``blocks`` + ``patch_embed``): the last block's first norm, tokens reshaped to
    a grid. timm CNNs: the module of the last ``feature_info`` stage (``layer4`` for
    ResNets), also when the backbone is wrapped. Otherwise the last ``Conv2d``.
    """
    for prefix, mod in model.named_modules():
        if hasattr(mod, "blocks") and hasattr(mod, "patch_embed"):
            return [mod.blocks[-1].norm1], _vit_reshape(mod)
        info = getattr(mod, "feature_info", None)
        if info:
            name = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
            return [mod.get_submodule(name)], None
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"no convolution in {type(model).__name__}; pass target layers explicitly")
    return [convs[-1]], None


def compute_cams(
    model: nn.Module,
    images: torch.Tensor,
    targets: Sequence[int],
    method: str = "gradcam",
    layers: list[nn.Module] | None = None,
    reshape_transform: Callable | None = None,
    batch_size: int = 8,
) -> np.ndarray:
    """CAMs of ``images`` (N, 3, H, W, already normalised) for output index ``targets[i]``.

    Returns float32 (N, H, W) in [0, 1] (each map min-max scaled by grad-cam).
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {sorted(METHODS)}")
    if len(targets) != len(images):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    if layers is None:
        layers, reshape_transform = target_layers(model)
    model.eval()
    out = []
    with METHODS[method](model=model, target_layers=layers, reshape_transform=reshape_transform) as cam:
        if hasattr(cam, "batch_size"):
            cam.batch_size = batch_size  # ScoreCAM's inner batch
        for i in range(0, len(images), batch_size):
            chunk = images[i:i + batch_size]
            tgt = [ClassifierOutputTarget(int(t)) for t in targets[i:i + batch_size]]
            out.append(cam(input_tensor=chunk, targets=tgt))
    cams = np.concatenate(out).astype(np.float32)
    return np.clip(np.nan_to_num(cams), 0.0, 1.0)


# --- images --------------------------------------------------------------------------------

def load_rgb(path: str | Path, size: int) -> np.ndarray:
    """uint8 RGB ``size`` x ``size`` (bilinear, as in training)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im).copy()


def to_tensor(rgbs: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Stack uint8 RGB images into a normalised float tensor (N, 3, H, W)."""
    x = torch.from_numpy(np.stack(rgbs)).permute(0, 3, 1, 2).float() / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def fov_mask_from_image(rgb: np.ndarray, threshold: int = FOV_THRESHOLD) -> np.ndarray:
    """Boolean FOV of a processed image (black outside the FOV); dark lesions inside are kept
    by filling holes."""
    m = rgb.max(axis=2) > threshold
    m = ndimage.binary_opening(m, iterations=2)
    return ndimage.binary_fill_holes(m)


def overlay(rgb: np.ndarray, cam: np.ndarray, mask: np.ndarray | None = None, image_weight: float = 0.55) -> np.ndarray:
    """CAM heat map over the fundus, black outside the FOV ``mask``."""
    if mask is None:
        mask = fov_mask_from_image(rgb)
    cam = np.where(mask, cam, 0.0).astype(np.float32)
    vis = show_cam_on_image(rgb.astype(np.float32) / 255.0, cam, use_rgb=True, image_weight=image_weight)
    vis[~mask] = 0
    return vis


# --- case selection ------------------------------------------------------------------------

def select_cases(pred_df: pd.DataFrame, task: dict | TaskSpec, per_group: int = 4) -> pd.DataFrame:
    """Most confident TP / FP / FN per class, deterministic.

    Decision: arg-max for multiclass / ordinal, p >= 0.5 for binary (positive class only)
    and multilabel (each label). TP and FP: highest probability of the class first; FN:
    lowest first (the most confidently missed). Ties: dataset, then image id.
    Returns columns ``class, class_index, group, rank, dataset, image_id, label, prob``.
    """
    spec = TaskSpec.from_dict(task)
    rows = []
    if spec.type == "binary":
        items = [(1, spec.names[1], pred_df["label"].to_numpy() == 1, pred_df[f"prob_{spec.names[1]}"] >= 0.5)]
    elif spec.type == "multilabel":
        items = [(j, n, pred_df[f"label_{n}"].to_numpy() == 1, pred_df[f"prob_{n}"] >= 0.5)
                 for j, n in enumerate(spec.names)]
    else:
        yhat = pred_df[[f"prob_{n}" for n in spec.names]].to_numpy().argmax(1)
        items = [(c, n, pred_df["label"].to_numpy() == c, pd.Series(yhat == c, index=pred_df.index))
                 for c, n in enumerate(spec.names)]
    for c, name, truth, pred in items:
        pred = np.asarray(pred)
        prob = pred_df[f"prob_{name}"].to_numpy(dtype=float)
        for group, sel, descending in (("TP", truth & pred, True), ("FP", ~truth & pred, True),
                                       ("FN", truth & ~pred, False)):
            sub = pred_df.loc[sel, ["dataset", "image_id"]].copy()
            sub["prob"] = prob[sel]
            sub["key"] = -sub["prob"] if descending else sub["prob"]
            sub = sub.sort_values(["key", "dataset", "image_id"], kind="mergesort").head(per_group)
            for rank, (_, r) in enumerate(sub.iterrows()):
                rows.append({"class": name, "class_index": c, "group": group, "rank": rank,
                             "dataset": r["dataset"], "image_id": r["image_id"], "label": int(group != "FP"),
                             "prob": float(r["prob"])})
    return pd.DataFrame(rows, columns=["class", "class_index", "group", "rank", "dataset", "image_id", "label", "prob"])


# --- gallery figure ------------------------------------------------------------------------

def gallery_figure(tiles: dict[tuple[str, int], tuple[np.ndarray, str]], per_group: int, title: str,
                   path: str | Path) -> Path:
    """Grid: rows TP / FP / FN, ``per_group`` columns; empty cells say 'none'."""
    fig, axes = plt.subplots(len(GROUPS), per_group, figsize=(2.4 * per_group, 2.6 * len(GROUPS)), squeeze=False)
    for i, g in enumerate(GROUPS):
        for j in range(per_group):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if (g, j) in tiles:
                img, caption = tiles[(g, j)]
                ax.imshow(img)
                ax.set_title(caption, fontsize=7)
            elif j == 0:
                ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
            if j == 0:
                ax.set_ylabel(g, fontsize=11)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_galleries(
    model: nn.Module,
    selection: pd.DataFrame,
    image_paths: dict[tuple[str, str], str | Path],
    spec: TaskSpec,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    out_dir: str | Path,
    methods: Sequence[str] = ("gradcam", "gradcampp"),
    per_group: int = 4,
) -> list[Path]:
    """Compute CAMs for the selected cases and write ``<method>_<class>.png`` per class.

    ``image_paths``: (dataset, image_id) -> processed image file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown CAM method(s) {bad}; choose from {sorted(METHODS)}")
    rgbs = []
    for r in selection.to_dict("records"):
        p = image_paths.get((r["dataset"], r["image_id"]))
        if p is None:
            raise KeyError(f"no image path for {r['dataset']}/{r['image_id']} in the task table")
        rgbs.append(load_rgb(p, img_size))
    paths = []
    layers, reshape = target_layers(model)
    for method in methods:
        cams = (compute_cams(model, to_tensor(rgbs, mean, std), selection["class_index"].tolist(), method,
                             layers, reshape) if rgbs else np.zeros((0, img_size, img_size), np.float32))
        for name in spec.names if spec.type != "binary" else spec.names[1:]:
            tiles = {}
            for k, r in enumerate(selection.to_dict("records")):
                if r["class"] != name:
                    continue
                tiles[(r["group"], r["rank"])] = (overlay(rgbs[k], cams[k]), f"{r['image_id']}\np={r['prob']:.2f}")
            title = f"{spec.name or 'task'}: {METHOD_NAMES[method]}, class {name!r} (most confident cases)"
            paths.append(gallery_figure(tiles, per_group, title, out / f"{method}_{_safe(name)}.png"))
    return paths


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def linear_probe_reason(model_dir) -> str | None:
    """Why ``model_dir`` has no activation maps, or None: it is a linear probe's folder
    (``.../<init>/linear/fold<k>/...`` in the results tree, or ``adaptation: linear`` in
    its ``model.json``), a logistic regression on frozen features with no network of its own."""
    from fundusfm import layout

    try:
        adaptation = layout.parse_key(layout.run_key(model_dir)[0]).get("adaptation")
    except ValueError:  # a folder outside the results tree: ask its model.json
        meta = Path(model_dir) / "model.json"
        adaptation = json.loads(meta.read_text()).get("adaptation") if meta.is_file() else None
    if adaptation in (None, "finetune"):
        return None
    return (f"{model_dir}: a {adaptation} run has no network weights of its own (a logistic regression on the "
            "init's frozen features); activation maps need a fine-tuned model: give a fine-tune's folder, or "
            "--best-of, which chooses among the fine-tunes")


def run_cam(model_dir, table, fold: int, predictions, out_dir, methods=("gradcam", "gradcampp"),
            per_group: int = 4, device: str = "cpu") -> list[Path]:
    """``fundusfm cam``: load the trained model, pick cases from its predictions, draw
    galleries. Raises ValueError for a linear probe's folder (:func:`linear_probe_reason`)."""
    from fundusfm.models import load_trained

    why = linear_probe_reason(model_dir)
    if why:
        raise ValueError(why)
    model, meta = load_trained(model_dir, device="cpu" if device is None else device)
    task = meta.get("task") if isinstance(meta.get("task"), dict) and "type" in meta.get("task", {}) else None
    if task is None:
        kind = meta["task_type"]
        task = {"type": kind, ("labels" if kind == "multilabel" else "classes"): meta["classes"]}
    # the task's name: recorded with the model, else the task table's (results/splits/<task>.csv)
    name = meta.get("task", {}).get("name") if isinstance(meta.get("task"), dict) else None
    spec = TaskSpec.from_dict(task, name or Path(table).stem)
    preds = read_predictions(predictions, spec)
    tab = pd.read_csv(table, dtype={"image_id": str, "dataset": str, "patient_id": str}, keep_default_na=False)
    col = f"fold{fold}"
    for c in ("dataset", "image_id", "image", col):
        if c not in tab.columns:
            raise KeyError(f"{table}: column {c!r} missing (task table contract)")
    tab = tab.set_index(["dataset", "image_id"])
    sel = select_cases(preds, spec, per_group)
    keys = list(zip(sel["dataset"], sel["image_id"]))
    missing = [k for k in keys if k not in tab.index]
    if missing:
        raise KeyError(f"{table}: images {missing[:3]} of {predictions} are not in the task table")
    roles = tab.loc[keys, col] if keys else pd.Series(dtype=str)
    leaked = [k for k, role in zip(keys, roles) if role not in ("test", "external")]
    if leaked:
        raise ValueError(f"{predictions}: images {leaked[:3]} are not test/external in {col} of {table}; "
                         "activation maps of training images would mislead")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "selection.csv", sel)
    image_paths = {k: tab.loc[k, "image"] for k in keys}
    return make_galleries(model, sel, image_paths, spec, int(meta["img_size"]), meta["mean"], meta["std"], out,
                          methods, per_group) + [out / "selection.csv"]

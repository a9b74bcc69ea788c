"""Random-weight checkpoints written in their authors' published key layouts, shared by
the tests (weights cannot be downloaded here). Each writer cites the code it mimics."""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch
from torch import nn

# a ViT small enough for CPU tests, in any timm ViT architecture's key names
TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2)


def randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random values where timm's init is constant (norm affines, BN statistics, tokens,
    layer scales), so a key loaded into the wrong place changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim <= 1 or name.split(".")[-1] in ("cls_token", "reg_token", "pos_embed"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (1.0 if name.endswith(".weight") else 0.0))
    return model.eval()


def mae_checkpoint(path: Path, arch: str, img_size: int | None = 64, seed: int = 1, **vit_kwargs):
    """An MAE pretraining checkpoint as RETFound publishes it (RETFound_cfp_weights.pth).

    Keys: facebookresearch/mae models_mae.py MaskedAutoencoderViT (the encoder in timm's
    VisionTransformer names, then decoder_embed, mask_token (1, 1, D_dec), decoder_pos_embed,
    decoder_blocks.N (timm Blocks), decoder_norm, decoder_pred); file: mae util/misc.py
    save_model's {"model", "optimizer", "epoch", "scaler", "args"} (args an argparse.Namespace).
    Returns the encoder (timm model, no head) and the path.
    """
    size = {"img_size": img_size} if img_size else {}
    enc = randomise(timm.create_model(arch, num_classes=0, **size, **vit_kwargs), seed)
    state = dict(enc.state_dict())
    dim, dec, n_tokens, patch = enc.embed_dim, 16, enc.pos_embed.shape[1], enc.patch_embed.patch_size[0]
    g = torch.Generator().manual_seed(seed + 100)
    state["decoder_embed.weight"] = torch.randn(dec, dim, generator=g)
    state["decoder_embed.bias"] = torch.randn(dec, generator=g)
    state["mask_token"] = torch.randn(1, 1, dec, generator=g)
    state["decoder_pos_embed"] = torch.randn(1, n_tokens, dec, generator=g)
    for k, v in timm.models.vision_transformer.Block(dec, 2).state_dict().items():
        state[f"decoder_blocks.0.{k}"] = torch.randn(v.shape, generator=g)
    state["decoder_norm.weight"], state["decoder_norm.bias"] = torch.ones(dec), torch.zeros(dec)
    state["decoder_pred.weight"] = torch.randn(patch * patch * 3, dec, generator=g)
    state["decoder_pred.bias"] = torch.zeros(patch * patch * 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "model": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "weight_decay": 0.05, "params": [0, 1]}]},
        "epoch": 799,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000},
        "args": argparse.Namespace(model="mae_vit_large_patch16", input_size=224, mask_ratio=0.75, norm_pix_loss=True),
    }, path)
    return enc, path

"""Model facts of an init for the study table: what the model is, how big, how fast.

Architecture, head, input size and normalisation, parameter counts (the whole model, the
backbone without the classification head, the head), the feature width a linear probe
sees, and inference throughput measured on the job's device. None of these depend on the
weights, so no checkpoint is read: the model is built as a fine-tune builds it
(:func:`fundusfm.models.factory.build`) with its random initialisation.
"""

from __future__ import annotations

import contextlib
import time

import timm
import torch

from fundusfm.models.factory import build, classifier_name, input_norm
from fundusfm.train.embed import device_name, pooled_features
from fundusfm.train.sets import MODEL_INIT_SALT, mix_seed


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters of the model, of its classification head, and of the rest (the backbone)."""
    prefix = classifier_name(model) + "."
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))
    return {"params_total": total, "params_backbone": total - head, "params_head": head}


@torch.inference_mode()
def throughput(model: torch.nn.Module, img_size: int, device: torch.device, *, batch_size: int = 16,
               seconds: float = 2.0, warmup: int = 1) -> dict:
    """Images per second of the whole model's forward pass on random input at ``img_size``
    (eval mode, channels_last; bf16 autocast on CUDA): ``warmup`` batches untimed, then
    batches until ``seconds`` have passed (at least one)."""
    model = model.eval().to(device, memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, img_size, img_size, generator=g).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with amp:
        for _ in range(max(0, warmup)):
            model(x)
        sync()
        n, t0 = 0, time.perf_counter()
        while True:
            model(x)
            n += 1
            sync()
            dt = time.perf_counter() - t0
            if dt >= seconds:
                break
    return {"images_per_s": round(n * batch_size / dt, 2), "batch_size": batch_size, "batches": n,
            "timed_s": round(dt, 3), "warmup_batches": warmup, "device": str(device),
            "device_name": device_name(device), "torch_threads": torch.get_num_threads(),
            "autocast": "bf16" if device.type == "cuda" else "none"}


def model_facts(hp: dict, num_outputs: int, device: torch.device | str = "cpu", *, init_name: str | None = None,
                batch_size: int = 16, seconds: float = 2.0) -> dict:
    """The facts of the model that resolved hparams ``hp`` define (see the module doc)."""
    device = torch.device(device)
    torch.manual_seed(mix_seed(0, MODEL_INIT_SALT))
    model = build(hp, num_outputs).eval()
    mean, std = input_norm(model, hp["mean"], hp["std"])
    size = int(hp["img_size"])
    with torch.inference_mode():
        dim = int(pooled_features(model, torch.zeros(2, 3, size, size)).shape[1])
    return {"init": init_name, "arch": hp["arch"], "head": hp["head"], "img_size": size, "mean": mean, "std": std,
            "num_outputs": num_outputs, **parameter_counts(model), "feature_dim": dim,
            "throughput": throughput(model, size, device, batch_size=batch_size, seconds=seconds),
            "versions": {"torch": torch.__version__, "timm": timm.__version__}}

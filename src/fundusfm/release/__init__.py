"""The release of a trained model: export, one-line loading and prediction on new photos.

A release folder (``results/release/``) holds only data, never code or pickles:

``model.safetensors``
    the weights (state dict of the timm model including its head);
``config.json``
    a timm-style config (``architecture``, ``num_classes``, ``label_names``,
    ``pretrained_cfg`` with ``input_size``, ``mean``, ``std``, ``classifier``) so that
    ``timm.create_model("local-dir:<folder>", pretrained=True)`` reads it, plus a
    ``fundusfm`` block: head, task, the exact preprocessing spec, label vocabulary,
    training data summary, versions, study metrics and file digests;
``README.md``
    the model card.

Entry points: :func:`load_model` (Python); ``fundusfm export`` and ``fundusfm predict``
(:mod:`fundusfm.release.cli`).
Imports are lazy so ``import fundusfm`` stays cheap.
"""

from __future__ import annotations

__all__ = ["load_model"]


def load_model(release_dir, device="cpu", trusted_keys=None):
    """A released model ready to predict, with its own preprocessing; ``trusted_keys``
    (public key files) verify who signed it (see :func:`fundusfm.release.loading.load_model`)."""
    from fundusfm.release.loading import load_model as _load

    return _load(release_dir, device=device, trusted_keys=trusted_keys)

"""timm model factory, heads, init sources and key-match reports."""

from fundusfm.models.factory import (
    HEADS,
    ImageNetWeightsUnavailable,
    classifier_name,
    create,
    default_mean_std,
    paper_head,
)
from fundusfm.models.init import InitError, KeyReport, load_init, read_checkpoint
from fundusfm.models.io import load_trained

__all__ = [
    "HEADS",
    "ImageNetWeightsUnavailable",
    "InitError",
    "KeyReport",
    "classifier_name",
    "create",
    "default_mean_std",
    "load_init",
    "load_trained",
    "paper_head",
    "read_checkpoint",
]

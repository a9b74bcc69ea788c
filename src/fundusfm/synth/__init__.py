"""Procedural synthetic colour fundus photographs with ground truth (``fundusfm synth``).

``draw``: one image (:func:`render_fundus`, :func:`render_non_fundus`);
``dataset``: a whole dataset folder (:func:`make_dataset`);
``adapter``: that folder as a manifest (:func:`read_manifest`).
"""

from fundusfm.synth.adapter import read_manifest
from fundusfm.synth.dataset import make_dataset, plan_dataset
from fundusfm.synth.draw import DEFECTS, Camera, Disease, Truth, render_fundus, render_non_fundus

__all__ = ["DEFECTS", "Camera", "Disease", "Truth", "make_dataset", "plan_dataset", "read_manifest",
           "render_fundus", "render_non_fundus"]

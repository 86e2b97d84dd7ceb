"""Pictures of what each locality mechanism does, on a real photo (``locvit viz``).

* :mod:`~locvit.viz.regionvit`: regional-token attention and a window's local attention (with its regional token);
* :mod:`~locvit.viz.focal`: a query's fine and coarse focal levels drawn back on the image grid;
* :mod:`~locvit.viz.vvt`: the vicinity re-weighting map and the effective linear attention of a query;
* :mod:`~locvit.viz.localvit`: depth-wise kernels and the receptive field against the host;
* :mod:`~locvit.viz.erf`: effective receptive fields per stage, side by side across models;
* :mod:`~locvit.viz.image`, :mod:`~locvit.viz.draw`, :mod:`~locvit.viz.probe`: the photo, drawing, hooks;
* :func:`~locvit.viz.run.render`: everything above for a list of models (the CLI).

Attention probabilities come from the explicit attention path
(:func:`~locvit.layers.attention.record_attention`), which gives the same outputs as the fused path.
matplotlib and scikit-learn (the default photo) come with ``pip install 'locvit[tools]'``.
"""
from locvit.viz.erf import ERF, effective_receptive_fields, radius_of_mass
from locvit.viz.focal import FocalMaps, focal_attention
from locvit.viz.image import default_photo, prepare, read_image
from locvit.viz.localvit import depthwise_kernels, host_model
from locvit.viz.regionvit import R2LMaps, regionvit_attention
from locvit.viz.run import render
from locvit.viz.vvt import VicinityMaps, vicinity_map, vvt_attention

__all__ = [
    "ERF",
    "FocalMaps",
    "R2LMaps",
    "VicinityMaps",
    "default_photo",
    "depthwise_kernels",
    "effective_receptive_fields",
    "focal_attention",
    "host_model",
    "prepare",
    "radius_of_mass",
    "read_image",
    "regionvit_attention",
    "render",
    "vicinity_map",
    "vvt_attention",
]

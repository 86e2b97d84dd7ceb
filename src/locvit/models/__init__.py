"""The model zoo: importing this package registers every family with timm.

What other locvit packages use from here has a public name in this module: the registry tables and look-ups
(:mod:`locvit.models._registry`) and :func:`clip_length`.
"""
from locvit.models import (  # noqa: F401
    deit,
    focal,
    focal_v2,
    localvit,
    localvit_hosts,
    localvit_swin,
    pvt,
    regionvit,
    regionvit_video,
    t2t,
    tnt,
    vvt,
)
from locvit.models._registry import (
    ALIASES,
    FAMILIES,
    OFFICIAL_HOMONYMS,
    DenseRecipe,
    ModelSpec,
    names_of,
    official_translator,
    spec_for_model,
    spec_of,
    translated_classes,
)
from locvit.models.interface import clip_length

__all__ = ["ALIASES", "FAMILIES", "OFFICIAL_HOMONYMS", "DenseRecipe", "ModelSpec", "clip_length", "names_of",
           "official_translator", "spec_for_model", "spec_of", "translated_classes"]

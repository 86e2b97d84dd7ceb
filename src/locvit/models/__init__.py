"""The model zoo: importing this package registers every family with timm.

What other locvit packages use from here has a public name in this module: the registry tables and look-ups
(:mod:`locvit.models._registry`), building and loading by name (:mod:`locvit.models.factory`), the demo sizes
(:mod:`locvit.models.demo`) and :func:`clip_length`.
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
from locvit.models.demo import DEMO_MODELS, DENSE_DEMO_MODELS
from locvit.models.factory import (
    create_model,
    family_of,
    find_filter_fn,
    list_models,
    load_checkpoint,
    resolve_alias,
)
from locvit.models.interface import clip_length

__all__ = ["ALIASES", "DEMO_MODELS", "DENSE_DEMO_MODELS", "FAMILIES", "OFFICIAL_HOMONYMS", "DenseRecipe", "ModelSpec",
           "clip_length", "create_model", "family_of", "find_filter_fn", "list_models", "load_checkpoint", "names_of",
           "official_translator", "resolve_alias", "spec_for_model", "spec_of", "translated_classes"]

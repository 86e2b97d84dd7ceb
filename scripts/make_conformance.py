#!/usr/bin/env python
"""Generate the in-repository conformance vectors by running the authors' own code.

The official repositories are read from a directory you give (nothing from them is copied into this repository)::

    git clone https://github.com/IBM/RegionViT                      OFFICIAL/RegionViT
    git clone https://github.com/microsoft/Focal-Transformer        OFFICIAL/Focal-Transformer
    git clone https://github.com/OpenNLPLab/Vicinity-Vision-Transformer OFFICIAL/Vicinity-Vision-Transformer
    git clone https://github.com/ofsoundof/LocalViT                 OFFICIAL/LocalViT
    python scripts/make_conformance.py --official-root OFFICIAL               # writes tests/conformance/vectors
    python scripts/make_conformance.py --official-root OFFICIAL --check ../shared/conformance

For each case below the official class is built with tiny widths and depths (a few hundred KB a vector), its
parameters are drawn at random with a fixed seed (norm affines moved away from 1, biases away from 0, BatchNorm
statistics perturbed), and its eval-mode logits are recorded in float32 and, from the same model and input in
float64, in float64. The vector format is described in ``tests/conformance/README.md``; the test suite checks
``locvit.from_official`` against every vector (float32 within 1e-4, float64 within 1e-8).

The official code predates current timm. Its imports are served at import time by the shims below (old module
paths, a private model registry so timm's own ``deit_*``/``pvt_*``/``swin_*`` entries are not overwritten, timm
0.3's ``VisionTransformer`` constructor, a removed helper), without editing any official file. ``--check DIR``
runs the same harness on an existing conformance set (e.g. the project's full set) and compares its logits, which
shows that the harness reproduces the reference runs.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import io
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "conformance" / "vectors"

# official module prefix -> (repository directory name, path inside it that goes on sys.path, GitHub name)
SOURCES = {
    "regionvit": ("RegionViT", "", "IBM/RegionViT"),
    "focal_transformer": ("Focal-Transformer", "classification", "microsoft/Focal-Transformer"),
    "focal_transformer_v2": ("Focal-Transformer", "classification", "microsoft/Focal-Transformer"),
    "vvt": ("Vicinity-Vision-Transformer", "classification", "OpenNLPLab/Vicinity-Vision-Transformer"),
    "models": ("LocalViT", "", "ofsoundof/LocalViT"),
}
LN6 = {"__partial__": "torch.nn.modules.normalization.LayerNorm", "kwargs": {"eps": 1e-06}}


@dataclass
class Case:
    name: str
    family: str
    official_class: str
    kwargs: dict[str, Any]
    input_size: tuple[int, int]
    notes: str
    seed: int = 0
    batch: int = 2


_FOCAL = dict(patch_size=4, in_chans=3, qkv_bias=True, qk_scale=None, drop_rate=0.0, drop_path_rate=0.0, ape=False,
              patch_norm=True, use_shift=False, focal_stages=[0, 1, 2, 3], expand_stages=[0, 1, 2, 3],
              expand_layer="all", use_layerscale=False, use_pre_norm=False, use_checkpoint=False, num_classes=5,
              embed_dim=8, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], mlp_ratio=2.0, focal_pool="fc",
              focal_levels=[2, 2, 2, 2], use_conv_embed=False)
_VVT = dict(patch_size=4, qkv_bias=True, norm_layer=LN6, num_stages=4, linear=False, img_size=224, num_classes=5,
            embed_dims=[8, 16, 16, 32], num_heads=[1, 2, 2, 4], mlp_ratios=[2, 2, 2, 2], depths=[1, 1, 2, 1],
            sr_ratios=[1, 1, 1, 1], fr_ratios=[2, 2, 2, 2], se_ratio=1)
_RVIT = dict(patch_size=4, num_classes=5, embed_dim=[8, 8, 16, 16, 32], num_heads=[1, 2, 2, 4], mlp_ratio=2.0,
             depth=[1, 1, 2, 1], downsampling=["c", "sc", "sc", "sc"], qkv_bias=True, norm_layer=LN6)
_DEIT = dict(patch_size=16, num_classes=5, embed_dim=16, depth=2, num_heads=2, mlp_ratio=4, qkv_bias=True,
             norm_layer=LN6)

CASES = [
    Case("regionvit_3conv_ws7_pad_60x92", "regionvit", "regionvit.regionvit.RegionViT",
         dict(_RVIT, img_size=224, kernel_sizes=[7, 7, 7, 7], patch_conv_type="3conv"), (60, 92),
         "3conv stem, window 7 at 60x92: regional grid 3x4 (centred padding of the regional stem), local tokens "
         "padded bottom/right with the attention mask in every stage.", seed=201),
    Case("regionvit_linear_ws4_peg_64x48", "regionvit", "regionvit.regionvit.RegionViT",
         dict(_RVIT, img_size=64, embed_dim=[8, 16, 16, 32, 32], kernel_sizes=[4, 4, 4, 4], patch_conv_type="linear",
              peg=True, qkv_bias=False, mlp_ratio=[2.0, 2.0, 1.0, 1.0]), (64, 48),
         "'linear' stem with embed_dim[0] != embed_dim[1] (LayerNorm2d + GELU + grouped 1x1 projection), window 4, "
         "PEG after the first block of every stage, qkv_bias=False, per-stage mlp ratios; non-square.", seed=202),
    Case("focal_fc_pad_72x100", "focal", "focal_transformer.FocalTransformer",
         dict(_FOCAL, img_size=[72, 100], window_size=7, focal_windows=[7, 5, 3, 1], expand_sizes=[3, 3, 3, 3],
              focal_levels=[3, 2, 2, 2], embed_dim=4, depths=[1, 1, 1, 1]), (72, 100),
         "fc pooling, three focal levels in stage 1, window 7 on 18x25 / 9x13 / 5x7 / 3x4 maps (zero padding to "
         "window multiples), expand 3.", seed=203),
    Case("focal_conv_shift_ape_ls_useconv_64x96", "focal", "focal_transformer.FocalTransformer",
         dict(_FOCAL, img_size=[64, 96], window_size=4, focal_windows=[3, 3, 1, 1], expand_sizes=[2, 2, 1, 1],
              focal_pool="conv", use_shift=True, ape=True, use_layerscale=True, expand_layer="odd",
              use_conv_embed=True, embed_dim=4, num_heads=[1, 2, 2, 4]), (64, 96),
         "depth-wise conv pooling, shifted windows with their mask, absolute position embedding, layer scale, "
         "expansion in odd blocks only, conv stem and conv downsampling, window 4; non-square.", seed=204),
    Case("focalv2_topk_64", "focal", "focal_transformer_v2.FocalTransformer",
         dict(_FOCAL, img_size=64, window_size=4, focal_windows=[3, 3, 1, 1], expand_sizes=[2, 2, 1, 1],
              focal_topK=16, embed_dim=4), (64, 64),
         "Focal v2: top-K (16) nearest keys per window and the coordinate-to-bias MLP, window 4 on 16/8/4/2 maps.",
         seed=205),
    Case("vvt_sr_fr_64x96", "vvt", "vvt.VicinityVisionTransformer",
         dict(_VVT, sr_ratios=[4, 2, 1, 1], fr_ratios=[1, 2, 2, 4]), (64, 96),
         "spatial reduction 4/2 in stages 1-2 (maps 16x24 and 8x12, multiples of the ratio as the official code "
         "needs), feature reduction 1/2/2/4; non-square.", seed=206),
    Case("vvt_odd_50x74_se2", "vvt", "vvt.VicinityVisionTransformer",
         dict(_VVT, se_ratio=2, num_heads=[2, 2, 4, 4], mlp_ratios=[4, 4, 2, 2]), (50, 74),
         "odd maps 13x19 -> 7x10 -> 4x5 -> 2x3, SE reduction 2, two heads in stage 1.", seed=207),
    Case("localvit_deit_hsse_48", "localvit", "models.localvit.LocalVisionTransformer",
         dict(_DEIT, img_size=48, act=3, reduction=4), (48, 48),
         "LocalViT on DeiT: act=3 (h_swish + SE, reduction 4), 3x3 tokens.", seed=208),
    Case("localvit_deit_relu6_40", "localvit", "models.localvit.LocalVisionTransformer",
         dict(_DEIT, img_size=40, patch_size=8, act=1, num_heads=4, mlp_ratio=6), (40, 40),
         "act=1 (ReLU6, no gate), patch 8 (5x5 tokens), expand 6.", seed=209),
    Case("localvit_deit_eca_ecah_32", "localvit", "models.localvit.LocalVisionTransformer",
         dict(_DEIT, img_size=32, patch_size=8, act=5, depth=1), (32, 32),
         "act=5 (h_swish + ECA with h_sigmoid gate), 4x4 tokens.", seed=210),
    Case("localvit_pvt_64", "localvit", "models.localvit_pvt.LocalViT_PVT",
         dict(img_size=64, patch_size=4, num_classes=5, embed_dims=[8, 16, 16, 32], num_heads=[1, 2, 2, 4],
              mlp_ratios=[4, 4, 2, 2], qkv_bias=True, norm_layer=LN6, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1]),
         (64, 64), "LocalViT-PVT: spatial-reduction attention (8/4/2/1: the official block takes the class token "
         "exactly where sr_ratio == 1), per-stage position embeddings, class token in stage 4 only, locality FFN in "
         "every block.", seed=211),
    Case("localvit_tnt_48", "localvit", "models.localvit_tnt.LocalViT_TNT",
         dict(img_size=48, patch_size=16, num_classes=5, embed_dim=16, in_dim=4, depth=2, num_heads=2,
              in_num_head=1, mlp_ratio=4.0, qkv_bias=False), (48, 48),
         "LocalViT-TNT: inner pixel transformer and outer patch transformer with the locality FFN, 3x3 patches.",
         seed=212),
    Case("localvit_t2t_224", "localvit", "models.localvit_t2t.LocalViT_T2T",
         dict(img_size=224, tokens_type="performer", num_classes=5, embed_dim=16, depth=1, num_heads=2,
              mlp_ratio=2.0, token_dim=8, reduction=4), (224, 224),
         "LocalViT-T2T: performer tokens-to-token and the locality FFN; 224 only (the official block hard-codes "
         "196 tokens), so one image (0.6 MB) instead of two.", seed=213, batch=1),
    # the plain hosts as LocalViT's repository defines them (locvit's pvt_*, tnt_*, t2t_vit_* models)
    Case("pvt_64", "localvit_baseline", "models.pvt.PyramidVisionTransformer",
         dict(img_size=64, patch_size=4, num_classes=5, embed_dims=[8, 16, 16, 32], num_heads=[1, 2, 2, 4],
              mlp_ratios=[4, 4, 2, 2], qkv_bias=True, norm_layer=LN6, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1]),
         (64, 64), "PVT host: spatial-reduction attention, per-stage position embeddings, class token in stage 4.",
         seed=215),
    Case("tnt_48", "localvit_baseline", "models.tnt.TNT",
         dict(img_size=48, patch_size=16, num_classes=5, embed_dim=16, in_dim=4, depth=2, num_heads=2, in_num_head=1,
              mlp_ratio=4.0, qkv_bias=False), (48, 48), "TNT host: inner pixel and outer patch transformers.",
         seed=216),
    Case("t2t_vit_transformer_64", "localvit_baseline", "models.t2t_vit.T2T_ViT",
         dict(img_size=64, tokens_type="transformer", num_classes=5, embed_dim=16, depth=2, num_heads=2,
              mlp_ratio=2.0, token_dim=8), (64, 64),
         "T2T-ViT host with the transformer tokens-to-token module (T2T-ViT_t), 4x4 tokens, sinusoid position "
         "embedding.", seed=217),
    Case("localvit_swin_ws4_64x128", "localvit", "models.localvit_swin.LocalViT_swin",
         dict(img_size=[64, 128], patch_size=4, num_classes=5, embed_dim=4, depths=[2, 2, 2, 2],
              num_heads=[1, 2, 2, 4], window_size=4, mlp_ratio=2.0, drop_path_rate=0.0), (64, 128),
         "LocalViT-Swin: shifted windows (mask) in odd blocks, window 4 on 16x32 / 8x16 / 4x8 maps; the 2x4 "
         "stage-4 map takes upstream's single-window rule (window 2, no shift).", seed=214),
]


# --- import shims for the official code (nothing official is edited) -----------------------------------------------
_MODEL_COLLECTOR: dict[str, Any] = {}


def _collect_model(fn: Any = None, **_: Any) -> Any:
    """Stands in for timm's ``register_model``: the official entry points go to a private dict."""
    if fn is None:
        return _collect_model
    _MODEL_COLLECTOR[fn.__name__] = fn
    return fn


def _no_pretrained(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("the conformance harness never loads pretrained weights")


def _vision_transformer_v03() -> type:
    """timm 0.3's ``VisionTransformer(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads,
    mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate, hybrid_backbone, norm_layer)``,
    which LocalViT subclasses with positional arguments, on top of current timm's class (same modules, key names
    and forward for these arguments: class-token pooling, learned position embedding added after the class token)."""
    from timm.models.vision_transformer import VisionTransformer

    class VisionTransformerV03(VisionTransformer):
        def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                     num_heads=12, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                     drop_path_rate=0.0, hybrid_backbone=None, norm_layer=nn.LayerNorm):
            if hybrid_backbone is not None or qk_scale is not None:
                raise NotImplementedError("hybrid_backbone / qk_scale are not needed by the conformance cases")
            super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                             global_pool="token", embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                             mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_rate=drop_rate,
                             attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, norm_layer=norm_layer)

        # subclasses replace ``blocks`` by a ModuleList, which timm 0.3 iterated
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch_embed(x)
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
            x = self.pos_drop(x + self.pos_embed)
            for blk in self.blocks:
                x = blk(x)
            return self.norm(x)[:, 0]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.forward_features(x))

    return VisionTransformerV03


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


@contextlib.contextmanager
def official_imports(path: Path) -> Iterator[None]:
    """``path`` on ``sys.path`` and the timm shims in ``sys.modules`` while the official modules import; both are
    removed afterwards (the official modules keep what they bound). Construction prints are swallowed."""
    import timm.data.transforms as timm_transforms
    import timm.layers
    import timm.models.vision_transformer as timm_vit

    shims = {
        "timm.models.layers": timm.layers,
        "timm.models.registry": _module("timm.models.registry", register_model=_collect_model),
        "timm.models.helpers": _module("timm.models.helpers", load_pretrained=_no_pretrained),
        "timm.models.vision_transformer": _module(
            "timm.models.vision_transformer", VisionTransformer=_vision_transformer_v03(), Mlp=timm.layers.Mlp,
            _cfg=lambda url="", **kw: {"url": url, "num_classes": 1000, "input_size": (3, 224, 224), **kw},
            **{k: getattr(timm_vit, k) for k in ("Block", "Attention", "PatchEmbed") if hasattr(timm_vit, k)}),
        "timm.data.transforms": _module("timm.data.transforms", **vars(timm_transforms),
                                        _pil_interp=timm_transforms.str_to_pil_interp),
    }
    saved = {k: sys.modules.get(k) for k in shims}
    sys.modules.update(shims)
    sys.path.insert(0, str(path))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        sys.path.remove(str(path))
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def source_of(official_class: str) -> tuple[str, str, str]:
    return SOURCES[official_class.split(".")[0]]


def official_class(root: Path, dotted: str) -> type:
    """Import ``<module>.<Class>`` from its official repository under ``root``."""
    module_name, _, cls_name = dotted.rpartition(".")
    repo_dir, sub, _ = source_of(dotted)
    path = root / repo_dir / sub
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: check out {source_of(dotted)[2]} as {root / repo_dir}")
    top = module_name.split(".")[0]
    loaded = sys.modules.get(top)
    if loaded is not None and not str(getattr(loaded, "__file__", "") or "").startswith(str(path)):
        raise RuntimeError(f"another module named {top!r} is already imported ({loaded}); run in a fresh process")
    with official_imports(path):
        module = importlib.import_module(module_name)
    return getattr(module, cls_name)


def official_commit(root: Path, dotted: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root / source_of(dotted)[0]), "rev-parse", "HEAD"],
                             capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def build(root: Path, dotted: str, kwargs: dict[str, Any]) -> nn.Module:
    from locvit.official import decode_kwargs

    cls = official_class(root, dotted)
    with contextlib.redirect_stdout(io.StringIO()):
        return cls(**decode_kwargs(kwargs))


# --- weights and logits -----------------------------------------------------------------------------------------------
def perturb_(model: nn.Module, gen: torch.Generator) -> None:
    """Random, non-trivial values for every trainable parameter and BatchNorm statistic: weights scaled by
    ``fan_in ** -0.5``, norm affines ``1 + 0.2 N``, biases ``0.1 N``, other tensors (tokens, position embeddings,
    relative-position tables, layer scales) ``0.5 N``. Fixed tensors (``requires_grad=False``: sinusoid tables,
    random-feature projections) keep the official values."""

    def randn(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=gen, dtype=t.dtype)

    with torch.no_grad():
        for module in model.modules():
            norm = "Norm" in type(module).__name__
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                if norm and name == "weight":
                    p.copy_(1 + 0.2 * randn(p))
                elif name == "bias" or name.endswith("_bias") and p.ndim == 1:
                    p.copy_(0.1 * randn(p))
                elif name == "weight" and p.ndim >= 2:
                    p.copy_(randn(p) * p[0].numel() ** -0.5)
                else:
                    p.copy_(0.5 * randn(p))
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.copy_(0.1 * randn(module.running_mean))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(x)


def make_vector(root: Path, case: Case) -> dict[str, Any]:
    torch.manual_seed(case.seed)  # the official initialisation (then overwritten) and any random buffers
    model = build(root, case.official_class, case.kwargs)
    gen = torch.Generator().manual_seed(case.seed)
    perturb_(model, gen)
    x = torch.randn(case.batch, 3, *case.input_size, generator=gen)
    logits = forward(model, x)
    v: dict[str, Any] = {
        "family": case.family,
        "official_class": case.official_class,
        "official_repo": source_of(case.official_class)[2],
        "official_commit": official_commit(root, case.official_class),
        "constructor_kwargs": case.kwargs,
        "state_dict": model.state_dict(),
        "input": x,
        "logits": logits,
        "torch_version": str(torch.__version__),
        "seed": case.seed,
        "notes": case.notes + " State dict: official init, then scripts/make_conformance.py perturb_. Eval mode, "
                              "torch.inference_mode.",
        "param_count": sum(p.numel() for p in model.parameters()),
    }
    try:
        logits64 = forward(copy.deepcopy(model).double(), x.double())
    except Exception as e:  # noqa: BLE001  (recorded: the official code cannot run in float64)
        v["logits_float64"], v["float64_error"] = None, f"{type(e).__name__}: {e}"
    else:
        v["logits_float64"] = logits64
        v["float64_vs_float32_max_abs_diff"] = (logits64 - logits.double()).abs().max().item()
    return v


def locvit_errors(v: dict[str, Any]) -> tuple[float, float | None]:
    """max |logit diff| of ``locvit.from_official`` on the vector, float32 and float64."""
    import locvit

    model = locvit.from_official(v["official_class"], v["constructor_kwargs"], state_dict=v["state_dict"])
    e32 = (forward(model, v["input"]) - v["logits"]).abs().max().item()
    if v.get("logits_float64") is None:
        return e32, None
    return e32, (forward(model.double(), v["input"].double()) - v["logits_float64"]).abs().max().item()


def check(root: Path, conformance: Path) -> bool:
    """Re-run the official forward of every vector in ``conformance`` (with its weights and input) and compare."""
    ok = True
    for path in sorted((conformance / "vectors").glob("*/*.pt")):
        v = torch.load(path, weights_only=True)
        torch.manual_seed(v.get("seed", 0))
        model = build(root, v["official_class"], v["constructor_kwargs"])
        model.load_state_dict(v["state_dict"], strict=True)
        e32 = (forward(model, v["input"]) - v["logits"]).abs().max().item()
        line = f"{path.parent.name}/{path.name}: official float32 max |diff| {e32:.2e}"
        good = e32 <= 1e-5
        if v.get("logits_float64") is not None:
            e64 = (forward(model.double(), v["input"].double()) - v["logits_float64"]).abs().max().item()
            line += f", float64 {e64:.2e}"
            good = good and e64 <= 1e-10
        print(("ok   " if good else "FAIL ") + line, flush=True)
        ok &= good
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--official-root", type=Path, required=True,
                        help="directory holding the official checkouts: " +
                             ", ".join(sorted({s[0] for s in SOURCES.values()})))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT.relative_to(REPO)}")
    parser.add_argument("--only", nargs="+", default=None, help="case names (default: all)")
    parser.add_argument("--check", type=Path, default=None, metavar="CONFORMANCE_DIR",
                        help="instead of generating, re-run the official code on an existing set and compare")
    parser.add_argument("--no-verify", action="store_true", help="skip checking locvit against the new vectors")
    args = parser.parse_args(argv)
    if not args.official_root.is_dir():
        parser.error(f"--official-root {args.official_root} is not a directory")
    torch.set_num_threads(1)  # the reference numbers do not depend on a machine's thread count
    if args.check is not None:
        return 0 if check(args.official_root, args.check) else 1
    from locvit.files import atomic_write

    cases = [c for c in CASES if args.only is None or c.name in args.only]
    if args.only and len(cases) != len(args.only):
        parser.error(f"unknown case in {args.only}; known: {', '.join(c.name for c in CASES)}")
    failed = False
    for case in cases:
        v = make_vector(args.official_root, case)
        path = args.out / case.family / f"{case.name}.pt"
        atomic_write(path, lambda f, v=v: torch.save(v, f))
        line = f"{path.relative_to(args.out)}: {v['param_count']} params, {path.stat().st_size / 1024:.0f} KB"
        if "float64_error" in v:
            line += f", no float64 ({v['float64_error'][:60]})"
        if not args.no_verify:
            e32, e64 = locvit_errors(torch.load(path, weights_only=True))
            good = e32 <= 1e-4 and (e64 is None or e64 <= 1e-8)
            failed |= not good
            line += f"; locvit max |diff| float32 {e32:.1e}" + ("" if e64 is None else f", float64 {e64:.1e}")
            line = ("ok   " if good else "FAIL ") + line
        print(line, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

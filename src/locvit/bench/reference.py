"""Reference figures: what the official READMEs report, and what fvcore counts on the official models.

``readme``: (params in M, GFLOPs) from the official README (or Papers-with-Code where noted); GFLOPs in these
papers are multiply-adds. ``fvcore``: fvcore's count (1 multiply-add = 1 FLOP, element-wise ops skipped) of the
official implementation at 224x224, batch 1, as recorded with the conformance manifests (shared/conformance).
"""
from __future__ import annotations

from typing import NamedTuple

from locvit.models import ALIASES, create_model, family_of


class Ref(NamedTuple):
    params_m: float | None
    gflops: float | None
    fvcore_gmacs: float | None
    source: str = ""


_RV = "IBM/RegionViT README"
_FT = "microsoft/Focal-Transformer README"
_VV = "OpenNLPLab/Vicinity-Vision-Transformer README"
_LV = "ofsoundof/LocalViT README"
REFERENCE: dict[str, Ref] = {
    "regionvit_tiny": Ref(13.8, 2.4, 2.43, _RV),
    "regionvit_small": Ref(30.6, 5.3, 5.36, _RV),
    "regionvit_medium": Ref(41.2, 7.4, 7.43, _RV),
    "regionvit_base": Ref(72.7, 13.0, 13.07, _RV),
    "regionvit_small_w14": Ref(None, None, 7.91),
    "regionvit_small_w14_peg": Ref(None, None, 7.91),
    "regionvit_base_w14": Ref(None, None, 17.46),
    "regionvit_base_w14_peg": Ref(None, None, 17.47),
    "focal_tiny": Ref(28.9, 4.9, 4.97, _FT),
    "focal_tiny_useconv": Ref(30.8, 5.2, 5.22, _FT),
    "focal_small": Ref(51.1, 9.4, 9.51, _FT),
    "focal_small_useconv": Ref(53.1, 9.7, 9.75, _FT),
    "focal_base": Ref(89.8, 16.4, 16.47, _FT),
    "focal_base_useconv": Ref(93.3, 16.8, 16.90, _FT),
    "focalv2_tiny_useconv": Ref(30.2, 5.0, 5.41, _FT),
    "focalv2_small_useconv": Ref(51.5, 9.4, 9.98, _FT),
    "focalv2_base_useconv": Ref(91.2, 16.4, 17.15, _FT),
    "vvt_tiny": Ref(12.9, None, 3.00, _VV),
    "vvt_small": Ref(25.5, None, 5.61, _VV),
    "vvt_medium": Ref(47.9, None, 9.42, _VV),
    "vvt_large": Ref(61.8, None, 10.83, _VV),
    "vvt_test": Ref(None, None, 0.08),
    "localvit_tiny": Ref(5.7, None, 1.28, _LV + " (5.7M is DeiT-Ti's count; the model has 5.91M)"),
    "localvit_tiny_se4": Ref(9.4, None, 1.28, _LV),
    "localvit_tiny_mlp6_relu6": Ref(None, None, 1.64),
    "localvit_small": Ref(22.4, None, 4.64, _LV),
    "localvit_pvt_tiny": Ref(13.5, None, 2.01, _LV),
    "localvit_tnt_tiny": Ref(6.3, 1.4, 1.44, _LV + "; GFLOPs via Papers-with-Code"),
    "localvit_tnt_small": Ref(None, None, 5.27),
    "localvit_t2t_vit_7": Ref(4.3, 1.2, 1.17, "LocalViT paper via Papers-with-Code"),
    "localvit_swin_tiny": Ref(29.1, None, 4.59, _LV),
    "pvt_tiny": Ref(None, None, 1.94),
    "pvt_small": Ref(None, None, 3.83),
    "pvt_medium": Ref(None, None, 6.68),
    "pvt_large": Ref(None, None, 9.85),
    "pvt_huge_v2": Ref(None, None, 50.60),
    "t2t_vit_7": Ref(None, None, 1.16),
    "t2t_vit_10": Ref(None, None, 1.53),
    "t2t_vit_12": Ref(None, None, 1.77),
    "t2t_vit_14": Ref(None, None, 4.80),
    "t2t_vit_14_resnext": Ref(None, None, 4.80),
    "t2t_vit_14_wide": Ref(None, None, 5.24),
    "t2t_vit_19": Ref(None, None, 8.50),
    "t2t_vit_24": Ref(None, None, 13.69),
    "t2t_vit_t_14": Ref(None, None, 6.11),
    "t2t_vit_t_19": Ref(None, None, 9.81),
    "t2t_vit_t_24": Ref(None, None, 15.00),
}


# Why a count differs from the official figures, by family (checked by counting the official code with the same
# counter: see docs/benchmarks/flops.md).
FAMILY_NOTES: dict[str, str] = {
    "regionvit": "the last block of a classifier computes only the regional tokens (the official code also computes "
                 "the local tokens and discards them); largest for ws 14, whose last stage pads 7x7 to one 14x14 "
                 "window",
    "focal": "pooled tokens go through the k/v rows of qkv only (official: q computed and discarded); v2 evaluates "
             "its coordinate-to-bias MLP once per distinct displacement instead of per window, query and key",
    "vvt": "numerator and normaliser come out of one product with [KV, k_sum] (the official code multiplies "
           "by k_sum separately): the same MACs plus one row, about +0.1%",
    "localvit": "same arithmetic as the official code",
    "pvt": "same arithmetic as the official code",
    "t2t": "same arithmetic as the official code",
}
COUNTER_NOTE = ("fvcore also counts normalisation layers (BatchNorm/LayerNorm/GroupNorm) and pooling, which "
                "torch.utils.flop_counter skips: about +0.3-1.5%")


def flops_table(models: list[str], official_counts: dict[str, float] | None = None) -> str:
    """Markdown table of params and GMACs at each model's default size against the official figures."""
    from locvit.bench.flops import count_flops

    inv: dict[str, list[str]] = {}
    for alias, canon in ALIASES.items():
        inv.setdefault(canon, []).append(alias)
    official_counts = official_counts or {}
    lines = ["| model | input | params (M) | README params (M) | GMACs (ours) | GMACs (official code, same counter) | "
             "GMACs (official code, fvcore) | README GFLOPs | difference explained |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in models:
        model = create_model(name)
        size = tuple(model.pretrained_cfg["input_size"])
        fc = count_flops(model, size)
        del model
        ref = REFERENCE.get(name, Ref(None, None, None))
        off = next((official_counts[n] for n in [name, *inv.get(name, [])] if n in official_counts), None)

        def f(v: float | None, digits: int = 2) -> str:
            return "-" if v is None else f"{v:.{digits}f}"

        fam = family_of(name) or ""
        note = ""
        if off is not None and abs(fc.gmacs - off) / off > 0.0005:
            note = FAMILY_NOTES.get("focal" if name.startswith("focal") else fam, "")
        elif off is not None:
            note = "identical to the official code"
        if ref.fvcore_gmacs is not None and off is not None and abs(ref.fvcore_gmacs - off) / off > 0.002:
            note += ("; " if note else "") + "fvcore: norms and pooling counted"
        lines.append(f"| `{name}` | {size[1]}x{size[2]} | {fc.params / 1e6:.2f} | {f(ref.params_m, 1)} | "
                     f"{fc.gmacs:.3f} | {f(off, 3)} | {f(ref.fvcore_gmacs)} | {f(ref.gflops, 1)} | {note} |")
    return "\n".join(lines)

"""locvit.dense: pyramid features at detection-like sizes, torchvision detectors, smp segmentation, pretrained
loading into backbones, and the framework snippets of docs/dense.md. Tiny configurations of each family keep it
fast; the sizes are detection sizes scaled down (800x1216 / 8 = 100x152, 640x1000 / 8 = 80x125) or odd."""
import json
import math
import re
import sys
import types
from functools import cache

import pytest
import timm
import torch
from timm.models import model_entrypoint
from torch import nn

import locvit
from conftest import REPO, conformance_dir
from locvit import dense

# Tiny kwargs per family file (a model's entrypoint module), applied on top of each registered configuration so
# that its distinctive settings (window 14, PEG, conv stems, SR ratios, ...) stay.
TINY = {
    "regionvit": dict(embed_dim=(16, 32, 64, 128), depth=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), mlp_ratio=2.0),
    "focal": dict(embed_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), mlp_ratio=2.0),
    "focal_v2": dict(embed_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), mlp_ratio=2.0, focal_topk=24),
    "vvt": dict(embed_dims=(8, 16, 16, 32), num_heads=(1, 2, 2, 4), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2)),
    # the PVT entrypoints fix their depths
    "pvt": dict(embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 2, 4), mlp_ratios=(2, 2, 2, 2)),
    "localvit_swin": dict(embed_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), mlp_ratio=2.0),
    "localvit": dict(embed_dim=32, depth=3, num_heads=2, reduction=4),
    "t2t": dict(embed_dim=32, depth=3, num_heads=2, mlp_ratio=2.0, token_dim=16),
    "tnt": dict(embed_dim=24, in_dim=8, depth=3, num_heads=2, in_num_head=2),
}
SIZES = [(100, 152), (80, 125), (97, 131), (123, 67), (75, 75)]
# one model per family (and per LocalViT host) for the end-to-end tests
REPRESENTATIVES = ["regionvit_tiny", "focal_tiny", "focalv2_tiny_useconv", "vvt_tiny", "pvt_tiny", "localvit_pvt_tiny",
                   "localvit_swin_tiny"]


def module_of(name: str) -> str:
    return model_entrypoint(name).__module__.rsplit(".", 1)[-1]


def tiny(name: str) -> dict:
    return dict(TINY.get(module_of(name), {}))


@cache
def _module_is_pyramid(module: str) -> bool:
    """Build one model of the family file (tiny when a tiny configuration fits it, else as registered) and ask its
    feature_info whether its levels have different strides."""
    names = [n for n in locvit.list_models() if module_of(n) == module]
    for name in names:
        try:
            model = timm.create_model(name, num_classes=0, **TINY.get(module, {}))
        except Exception:  # a tiny configuration that does not fit this model: try the next one
            continue
        break
    else:
        model = timm.create_model(names[0], num_classes=0)
    return len({info["reduction"] for info in model.feature_info}) > 1


PYRAMIDS = [n for n in locvit.list_models() if _module_is_pyramid(module_of(n))]


def test_pyramid_list_covers_the_families():
    """The registry-derived list holds every pyramid family named by the docs, and nothing single-scale."""
    modules = {module_of(n) for n in PYRAMIDS}
    assert {"regionvit", "focal", "focal_v2", "vvt", "pvt", "localvit_swin"} <= modules
    assert not modules & {"localvit", "t2t", "tnt", "deit"}
    assert len(PYRAMIDS) >= 30


# --- features at odd sizes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PYRAMIDS)
def test_features_match_feature_info(name):
    """Every pyramid model, with its dense recipe (RegionViT's det_norm, ...): four NCHW maps whose channels are
    feature_info's and whose sizes are the input's divided by feature_info's strides (floor or ceil, each level
    half the previous one), at five odd sizes; forward_intermediates agrees with features_only."""
    torch.manual_seed(0)
    model = dense.create_features(name, **tiny(name)).eval()
    info = model.feature_info
    assert len(set(info.reduction())) == len(info.reduction()) == 4
    for H, W in SIZES:
        with torch.no_grad():
            outs = model(torch.randn(1, 3, H, W))
        assert len(outs) == 4
        prev = (H, W)
        for t, c, r in zip(outs, info.channels(), info.reduction()):
            assert t.shape[:2] == (1, c), (name, (H, W), tuple(t.shape), c)
            h, w = t.shape[-2:]
            assert h in (H // r, math.ceil(H / r)) and w in (W // r, math.ceil(W / r)), (name, (H, W), r, (h, w))
            assert torch.isfinite(t).all()
            if r > info.reduction()[0]:
                assert h in (prev[0] // 2, -(-prev[0] // 2)) and w in (prev[1] // 2, -(-prev[1] // 2))
            prev = (h, w)
    inner = model.model
    with torch.no_grad():
        again = inner.forward_intermediates(torch.randn(1, 3, *SIZES[0]), indices=(0, 1, 2, 3),
                                            intermediates_only=True)
    assert [tuple(t.shape[1:]) for t in again] == [(c, *o.shape[-2:]) for c, o in zip(
        info.channels(), model(torch.randn(1, 3, *SIZES[0])))]


def test_recipes_and_non_pyramids():
    rv = dense.create_backbone("regionvit_tiny", out_channels=16, **tiny("regionvit_tiny"))
    assert rv.body.model.det_norm and rv.out_norms is None
    assert not dense.create_features("regionvit_tiny", recipe=False, **tiny("regionvit_tiny")).model.det_norm
    assert not dense.create_features("regionvit_tiny", det_norm=False, **tiny("regionvit_tiny")).model.det_norm
    focal = dense.create_backbone("focal_tiny", out_channels=16, **tiny("focal_tiny"))
    assert focal.out_norms is not None and len(focal.out_norms) == 4
    seen = []
    focal.out_norms[3].register_forward_hook(lambda mod, args, out: seen.append(args[0].shape))
    with torch.no_grad():
        focal.eval()(torch.randn(1, 3, 97, 131))
    assert seen == [(1, 64, 3, 4)]  # the last level passes through its norm on the way to the FPN
    assert focal.body.model.img_size == (256, 256)  # the full window + ring geometry in every stage
    assert all(blk.attn.expand_size > 0 for blk in focal.body.model.layers[3].blocks)
    assert dense.create_backbone("focal_tiny", out_channels=16, out_norm=False, **tiny("focal_tiny")).out_norms is None
    assert dense.dense_recipe("localvit_swin_tiny_patch4_window7_224").out_norm  # official aliases resolve
    # the recipe is the one the model file declares next to its feature config
    from locvit.models import focal, focal_v2, pvt, vvt

    assert dense.dense_recipe("vvt_tiny") == vvt.VVT.dense and "Semantic FPN" in vvt.VVT.dense.source
    assert dense.dense_recipe("focalv2_tiny_useconv") == focal_v2.FOCAL_V2.dense == focal.FOCAL.dense
    assert dense.dense_recipe("localvit_pvt_tiny") == dense.dense_recipe("pvt_tiny") == pvt.PVT.dense
    assert dense.dense_recipe("localvit_tiny") == dense.DenseRecipe()  # isotropic: no recipe
    with pytest.raises(ValueError, match="unknown model"):
        dense.create_backbone("regionvit_tinny")
    with pytest.raises(ValueError, match="not a feature pyramid"):
        dense.create_features("localvit_tiny", out_indices=(0, 1, 2), **tiny("localvit_tiny"))


def test_backbone_outputs_and_strides():
    bb = dense.create_backbone("vvt_tiny", out_channels=24, **tiny("vvt_tiny")).eval()
    with torch.no_grad():
        out = bb(torch.randn(2, 3, 97, 131))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert bb.strides == [4, 8, 16, 32, 64]
    assert all(t.shape[:2] == (2, 24) for t in out.values())
    assert [t.shape[-1] for t in out.values()] == [33, 17, 9, 5, 3]
    p6p7 = dense.create_backbone("vvt_tiny", (1, 2, 3), out_channels=24, extra_blocks="p6p7", **tiny("vvt_tiny"))
    with torch.no_grad():
        out = p6p7(torch.randn(1, 3, 97, 131))
    assert list(out) == ["0", "1", "2", "p6", "p7"] and p6p7.strides == [8, 16, 32, 64, 128]


# --- torchvision detectors --------------------------------------------------------------------------------------
def _targets(images):
    targets = []
    for k, im in enumerate(images):
        H, W = im.shape[-2:]
        boxes = torch.tensor([[8.0, 10.0, 50.0, 60.0], [30.0 + k, 22.0, 80.0, 75.0]])
        masks = torch.zeros(2, H, W, dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            m[y0:y1, x0:x1] = 1
        targets.append(dict(boxes=boxes, labels=torch.tensor([1, 2]), masks=masks))
    return targets


def _small_heads(channels: int, num_classes: int) -> dict:
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    return dict(box_head=TwoMLPHead(channels * 49, 64), box_predictor=FastRCNNPredictor(64, num_classes),
                mask_head=MaskRCNNHeads(channels, (16, 16), 1), mask_predictor=MaskRCNNPredictor(16, 16, num_classes))


SMALL_DET = dict(min_size=96, max_size=160, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=50,
                 rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=50, box_batch_size_per_image=32,
                 box_detections_per_img=20)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_mask_rcnn_train_and_eval(name):
    """A torchvision Mask R-CNN on the locvit backbone: a training step on two non-square images of different,
    non-divisible sizes gives finite losses and gradients in every backbone parameter; eval gives boxes and
    masks of each image's size. size_divisible=1 hands the backbone the non-divisible sizes themselves."""
    torch.manual_seed(0)
    model = dense.mask_rcnn(name, None, out_channels=16, model_kwargs=tiny(name), size_divisible=1,
                            **_small_heads(16, 3), **SMALL_DET)
    images = [torch.rand(3, 97, 131), torch.rand(3, 110, 86)]
    model.train()
    losses = model(images, _targets(images))
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    body = model.backbone.body.model
    skip = set(getattr(body, "unused_parameters", ()))
    no_grad = [n for n, p in body.named_parameters()
               if n not in skip and (p.grad is None or not p.grad.isfinite().all())]
    assert not no_grad, no_grad
    assert any(p.grad.abs().sum() > 0 for n, p in body.named_parameters() if n not in skip)

    model.eval()
    with torch.no_grad():
        outs = model(images)
    for out, im in zip(outs, images):
        n = out["boxes"].shape[0]
        assert out["scores"].shape == (n,) and out["labels"].shape == (n,)
        assert out["masks"].shape == (n, 1, *im.shape[-2:])
        if n:
            assert out["boxes"][:, 2].max() <= im.shape[-1] and out["boxes"][:, 3].max() <= im.shape[-2]


def test_faster_rcnn_and_retinanet():
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    images = [torch.rand(3, 90, 141), torch.rand(3, 121, 77)]
    targets = [{k: v for k, v in t.items() if k != "masks"} for t in _targets(images)]
    frcnn = dense.faster_rcnn("regionvit_tiny", None, out_channels=16, model_kwargs=tiny("regionvit_tiny"),
                              box_head=TwoMLPHead(16 * 49, 32), box_predictor=FastRCNNPredictor(32, 3),
                              **SMALL_DET)
    retina = dense.retinanet("localvit_swin_tiny", 3, out_channels=16, model_kwargs=tiny("localvit_swin_tiny"),
                             min_size=96, max_size=160, detections_per_img=20)
    assert retina.backbone.strides == [8, 16, 32, 64, 128]
    assert retina.anchor_generator.sizes[0] == (32, 40, 50)
    for model in (frcnn, retina):
        model.train()
        losses = model(images, targets)
        assert losses and all(torch.isfinite(v) for v in losses.values()), losses
        sum(losses.values()).backward()
        stem = next(model.backbone.body.model.parameters())
        assert stem.grad is not None and stem.grad.isfinite().all()
        model.eval()
        with torch.no_grad():
            outs = model(images)
        assert len(outs) == 2 and all(o["boxes"].shape[-1] == 4 for o in outs)


# --- segmentation -------------------------------------------------------------------------------------------------
def test_pad_crop():
    conv = nn.Conv2d(3, 2, 3, padding=1)
    wrapped = dense.PadCrop(conv, 32)
    x = torch.randn(1, 3, 37, 50)
    out = wrapped(x)
    assert out.shape == (1, 2, 37, 50)
    full = conv(torch.nn.functional.pad(x, (0, 14, 0, 27)))
    torch.testing.assert_close(out, full[..., :37, :50])

    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x.mean()

    masks, label = dense.PadCrop(Pair(), 16)(x)
    assert masks.shape == x.shape and label.ndim == 0


def _smp():
    try:
        import segmentation_models_pytorch
    except ImportError:  # the tools extra is not installed
        pytest.skip("segmentation_models_pytorch is not installed (pip install 'locvit[tools]')")
    return segmentation_models_pytorch


@pytest.mark.parametrize("name", ["regionvit_tiny", "focal_tiny", "vvt_test", "pvt_tiny", "localvit_swin_tiny"])
def test_smp_segmentation(name):
    """smp's timm-universal encoder ``tu-<name>`` on every family: masks of the input size, gradients in the
    encoder; smp_model adds any-size inputs (padding to the decoder's stride, output cropped)."""
    smp = _smp()
    torch.manual_seed(0)
    kw = tiny(name)
    kw.pop("depth", None)  # smp takes `depth` for itself (the encoder depth): RegionViT keeps its depths here
    model = smp.FPN(encoder_name=f"tu-{name}", encoder_weights=None, classes=3, decoder_pyramid_channels=32,
                    decoder_segmentation_channels=32, **kw)
    x = torch.randn(2, 3, 96, 128)
    out = model(x)
    assert out.shape == (2, 3, 96, 128)
    out.mean().backward()
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)

    # smp_model also takes a model `depth` (RegionViT's blocks per stage), which smp reserves for itself
    any_size = dense.smp_model("FPN", name, 3, decoder_pyramid_channels=32, decoder_segmentation_channels=32,
                               **tiny(name)).eval()
    with torch.no_grad():
        assert any_size(torch.randn(1, 3, 97, 131)).shape == (1, 3, 97, 131)
    if name == "regionvit_tiny":
        body = any_size.model.encoder.model.model
        assert body.det_norm  # the dense recipe reached the encoder
        assert [len(stage.blocks) for stage in body.stages] == list(tiny(name)["depth"])


# --- pretrained classification weights ----------------------------------------------------------------------------
def test_pretrained_regionvit_window_change(tmp_path, capsys):
    """RegionViT-style fine-tuning for detection: a window-7 classification checkpoint loads into a window-14,
    det_norm backbone; the regional kernel and the rel-pos tables are resized by the family's filter, the
    detection norms are new, the classifier and final norm are dropped, and the report says so."""
    from locvit.models.regionvit import resize_region_kernel, resize_rel_pos

    kw = tiny("regionvit_tiny")
    torch.manual_seed(0)
    cls = locvit.create_model("regionvit_tiny", num_classes=10, **kw)
    for p in cls.parameters():
        p.data.normal_()
    path = locvit.save_checkpoint(cls, tmp_path / "cls.safetensors")
    bb = dense.create_backbone("regionvit_tiny", out_channels=16, checkpoint=path, window_size=14, **kw)
    printed = capsys.readouterr().out
    rep = bb.load_report
    rel = {f"stages.{i}.blocks.0.attn.rel_pos" for i in range(4)}
    assert set(rep.converted) == rel | {"region_embed.proj.weight"}
    assert set(rep.new) == {f"stages.{i}.det_norm.{w}" for i in range(4) for w in ("weight", "bias")}
    assert set(rep.dropped) == {"head.weight", "head.bias", "norm.weight", "norm.bias"}
    assert rep.adapter_new == ["fpn"] and not rep.mismatched
    assert "newly initialised (8)" in printed and "dropped from the checkpoint (4)" in printed
    body, src = bb.body.model.state_dict(), cls.state_dict()
    for k in rep.loaded:
        torch.testing.assert_close(body[k], src[k])
    torch.testing.assert_close(body["stages.2.blocks.0.attn.rel_pos"],
                               resize_rel_pos(src["stages.2.blocks.0.attn.rel_pos"], 14))
    torch.testing.assert_close(body["region_embed.proj.weight"],
                               resize_region_kernel(src["region_embed.proj.weight"], (56, 56)))
    assert len(rep.loaded) + len(rep.converted) + len(rep.new) == len(body)


def test_pretrained_other_families():
    """Focal at its detection geometry (the last stage gains a ring, whose table starts at zero), PVT at another
    size (position embeddings resampled), VVT (nothing to resize), LocalViT-Swin (Swin head dropped)."""
    torch.manual_seed(0)
    focal_cls = locvit.create_model("focal_tiny", num_classes=10, **tiny("focal_tiny"))
    rep = dense.load_pretrained(dense.create_backbone("focal_tiny", out_channels=16, **tiny("focal_tiny")),
                                focal_cls.state_dict(), verbose=False)
    assert rep.new == ["layers.3.blocks.0.attn.relative_position_bias_table_to_neighbors"]
    assert rep.adapter_new == ["fpn", "out_norms"] and {"head.weight", "norm.weight"} <= set(rep.dropped)

    pvt_cls = locvit.create_model("pvt_tiny", num_classes=10, **tiny("pvt_tiny"))
    feats = dense.create_features("pvt_tiny", img_size=320, checkpoint={"model": pvt_cls.state_dict()}, verbose=False,
                                  **tiny("pvt_tiny"))
    assert sorted(feats.load_report.converted) == [f"stages.{i}.pos_embed" for i in range(4)]

    for name in ("vvt_tiny", "localvit_swin_tiny"):
        cls = locvit.create_model(name, num_classes=10, **tiny(name))
        rep = dense.load_pretrained(dense.create_features(name, **tiny(name)), cls.state_dict(), verbose=False)
        assert not rep.converted and not rep.new and rep.loaded
        assert {k for k in rep.dropped if k.startswith("head")} == {k for k in cls.state_dict() if k.startswith("head")}


def test_pretrained_official_regionvit_checkpoint():
    """An official-format RegionViT-Ti file (key layout of the authors' release) into the window-14 detection
    backbone, as the authors' conversion tool does it."""
    manifest = conformance_dir() / "manifests" / "regionvit_tiny_224.json"
    if not manifest.is_file():
        pytest.skip(f"conformance manifests not found at {manifest.parent} (set LOCVIT_CONFORMANCE_DIR)")
    m = json.loads(manifest.read_text())
    torch.manual_seed(0)
    sd = {k: torch.randn(shape) * 0.02 for k, shape in m["state_dict"].items()}
    for group in m["state_dict_shared_storage"]:
        for k in group[1:]:
            sd[k] = sd[group[0]]
    feats = dense.create_features("regionvit_tiny", window_size=14, checkpoint={"model": sd}, verbose=False)
    rep = feats.load_report
    assert "region_embed.proj.weight" in rep.converted
    assert sum(".attn.rel_pos" in k for k in rep.converted) == 14  # every block's table
    assert len(rep.new) == 8 and all(".det_norm." in k for k in rep.new)
    assert {"head.weight", "head.bias", "norm.weight", "norm.bias"} == set(rep.dropped)
    with torch.no_grad():
        outs = feats.eval()(torch.randn(1, 3, 100, 152))
    assert [tuple(o.shape[-2:]) for o in outs] == [(25, 38), (13, 19), (7, 10), (4, 5)]


# --- docs/dense.md ------------------------------------------------------------------------------------------------
DOC = REPO / "docs" / "dense.md"


def _block(marker: str) -> str:
    """The fenced code block that follows ``<!-- marker -->`` in docs/dense.md."""
    text = DOC.read_text()
    m = re.search(rf"<!-- {marker} -->\s*```\w*\n(.*?)```", text, re.S)
    assert m, f"no block marked {marker} in {DOC}"
    return m.group(1)


@pytest.mark.parametrize("marker", ["mmdet-config", "mmseg-config"])
def test_docs_mm_configs_match_the_backbone(marker):
    """The mmdetection / mmsegmentation config snippets: what mmpretrain's TIMMBackbone builds from them (its
    timm.create_model call) runs and feeds the neck / decode heads exactly the channels they declare."""
    ns: dict = {}
    exec(_block(marker), ns)
    assert "locvit" in ns["custom_imports"]["imports"]
    bb = {k: v for k, v in ns["model"]["backbone"].items() if k != "_delete_"}
    assert bb.pop("type") == "mmpretrain.TIMMBackbone" and bb.pop("pretrained") is False
    model = timm.create_model(model_name=bb.pop("model_name"), features_only=bb.pop("features_only"),
                              pretrained=False, in_chans=bb.pop("in_channels", 3), checkpoint_path="", **bb)
    channels = model.feature_info.channels()
    if marker == "mmdet-config":
        assert channels == ns["model"]["neck"]["in_channels"]
    else:
        assert channels == ns["model"]["decode_head"]["in_channels"]
        assert ns["model"]["auxiliary_head"]["in_channels"] == channels[2]  # mmseg's UperNet aux reads level 2
    with torch.no_grad():
        outs = model.eval()(torch.randn(1, 3, 100, 152))
    assert [o.shape[1] for o in outs] == channels


def test_docs_detectron2_wrapper_runs():
    """The detectron2 snippet, run against a stand-in of the three detectron2 names it uses: its backbone's
    output_shape() agrees with what forward returns."""
    fake = types.ModuleType("detectron2.modeling")

    class ShapeSpec:
        def __init__(self, channels=None, height=None, width=None, stride=None):
            self.channels, self.stride = channels, stride

    class Registry:
        def __init__(self):
            self.fns = {}

        def register(self, fn=None):
            def add(f):
                self.fns[f.__name__] = f
                return f
            return add(fn) if fn is not None else add

    fake.Backbone, fake.ShapeSpec, fake.BACKBONE_REGISTRY = nn.Module, ShapeSpec, Registry()
    fpn = types.ModuleType("detectron2.modeling.backbone.fpn")
    fpn.FPN = fpn.LastLevelMaxPool = fpn.LastLevelP6P7 = object
    saved = {k: sys.modules.get(k) for k in ("detectron2", "detectron2.modeling", "detectron2.modeling.backbone",
                                             "detectron2.modeling.backbone.fpn")}
    sys.modules.update({"detectron2": types.ModuleType("detectron2"), "detectron2.modeling": fake,
                        "detectron2.modeling.backbone": types.ModuleType("detectron2.modeling.backbone"),
                        "detectron2.modeling.backbone.fpn": fpn})
    try:
        ns: dict = {"__name__": "d2_snippet"}
        exec(_block("detectron2-wrapper"), ns)
        cfg = types.SimpleNamespace(MODEL=types.SimpleNamespace(BACKBONE=types.SimpleNamespace(
            LOCVIT="vvt_test", LOCVIT_KWARGS={}, LOCVIT_CHECKPOINT="", FREEZE_AT=0)))
        bottom_up = fake.BACKBONE_REGISTRY.fns["build_locvit_backbone"](cfg, None)
        with torch.no_grad():
            out = bottom_up(torch.randn(1, 3, 100, 152))
        shapes = bottom_up.output_shape()
        assert list(out) == list(shapes) == ["res2", "res3", "res4", "res5"]
        for i, (k, t) in enumerate(out.items()):
            assert t.shape[1] == shapes[k].channels and shapes[k].stride == 4 * 2 ** i
        assert bottom_up.size_divisibility == 32
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v

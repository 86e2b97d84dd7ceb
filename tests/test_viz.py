"""``locvit viz``: the pictures are written, the attention they show is a distribution read from the explicit path,
local and global queries see different things, and recording changes no result."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import locvit
from locvit.layers.attention import record_attention
from locvit.viz import (
    default_photo,
    depthwise_kernels,
    effective_receptive_fields,
    focal_attention,
    prepare,
    regionvit_attention,
    vicinity_map,
    vvt_attention,
)
from locvit.viz.localvit import localvit_erfs

pytest.importorskip("matplotlib")
SIZE = 112


def small(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return locvit.create_model(name, img_size=SIZE, **kw).eval()


@pytest.fixture(scope="module")
def photo():
    return default_photo()


def inp(model, photo):
    return prepare(photo, model, (SIZE, SIZE)).tensor


def test_default_photo_is_a_real_image(photo):
    assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
    assert min(photo.shape[:2]) >= 224 and photo.std() > 20


@pytest.mark.parametrize("name", ["regionvit_tiny", "focal_tiny", "focalv2_tiny_useconv", "vvt_tiny",
                                  "localvit_tiny", "localvit_swin_tiny"])
def test_recording_attention_changes_no_output(name, photo):
    model = small(name)
    x = inp(model, photo)
    with torch.no_grad():
        ref = model(x)
        with record_attention() as rec:
            rec_out = model(x)
    torch.testing.assert_close(rec_out, ref, rtol=1e-5, atol=1e-5)
    if not name.startswith("vvt"):  # VVT's attention is linear: no probabilities exist to record
        assert rec and all(p.sum(-1).sub(1).abs().max() < 1e-4 for calls in rec.values() for p in calls)


def test_regionvit_maps_sum_to_one_and_local_differs_from_global(photo):
    model = small("regionvit_tiny")
    x = inp(model, photo)
    a = regionvit_attention(model, x, (10, 10))
    assert a.regional.shape == (4, 4) and a.local.shape == (7, 7)  # 112 / 28 regions; 7x7 windows
    assert a.regional.sum() == pytest.approx(1, abs=1e-5)
    assert a.local.sum() + a.regional_weight == pytest.approx(1, abs=1e-5)
    b = regionvit_attention(model, x, (100, 100))
    assert a.region == (0, 0) and b.region == (3, 3)
    # the regional (global) map covers every region for both queries, and differs between them;
    # the local maps live in different windows
    assert not np.allclose(a.regional, b.regional, atol=1e-4)
    assert not np.allclose(a.local, b.local, atol=1e-4)


@pytest.mark.parametrize("name", ["focal_tiny", "focalv2_tiny_useconv"])
def test_focal_levels_sum_to_one_and_fine_level_is_local(name, photo):
    model = small(name)
    x = inp(model, photo)
    corner = focal_attention(model, x, (2, 2))
    centre = focal_attention(model, x, (60, 60))
    for m in (corner, centre):
        assert m.total == pytest.approx(1, abs=1e-4)
        assert len(m.levels) == 1 + model.layers[0].blocks[0].attn.num_pooled
    fine_a, fine_b = corner.levels[0].weights, centre.levels[0].weights
    # fine attention of the centre query stays near it (v1: its window and ring; v2: its top-K nearest tokens);
    # a corner query's v1 ring wraps cyclically, so only the centre query is checked for distance
    ys, xs = np.nonzero(fine_b)
    ty, tx = centre.token
    reach = centre.window_size + centre.expand_size if centre.version == 1 else int(np.ceil(np.sqrt(len(ys))))
    assert len(ys) < fine_b.size / 4
    assert np.abs(ys - ty).max() <= reach and np.abs(xs - tx).max() <= reach
    assert not np.allclose(fine_a, fine_b)
    # coarse levels reach beyond the fine window
    coarse = corner.levels[-1]
    assert coarse.weights.size > 1 and coarse.weights.sum() > 0


def test_vvt_reweighting_and_effective_attention(photo):
    grid = (7, 7)
    r = vicinity_map(grid, (3, 3))
    assert r.max() == pytest.approx(2.0) and r[3, 3] == pytest.approx(2.0)
    assert r[0, 0] < r[2, 3] < r[3, 3]  # falls with the Manhattan distance
    model = small("vvt_tiny")
    x = inp(model, photo)
    a = vvt_attention(model, x, (4, 4), stage=-1)  # last stage: no feature reduction, keys = queries
    b = vvt_attention(model, x, (108, 108), stage=-1)
    for m in (a, b):
        assert m.effective.sum() == pytest.approx(1, abs=1e-5) and m.content.sum() == pytest.approx(1, abs=1e-5)
        assert (m.effective >= 0).all()
    assert np.unravel_index(a.reweight.argmax(), a.reweight.shape) == a.token
    assert not np.allclose(a.effective, b.effective)
    # the re-weighting moves mass towards the query relative to content alone
    ty, tx = a.token
    assert a.effective[ty, tx] / a.content[ty, tx] > a.effective[-1, -1] / a.content[-1, -1]


def test_effective_receptive_field_grows_with_depth(photo):
    model = small("regionvit_tiny")
    erfs = effective_receptive_fields(model, inp(model, photo))
    assert len(erfs) == 4 and all(e.grad.shape == (SIZE, SIZE) for e in erfs)
    assert all(np.isfinite(e.grad).all() and e.grad.sum() > 0 for e in erfs)
    assert erfs[0].radius() < erfs[-1].radius()


def test_localvit_kernels_and_host_comparison(photo):
    model = small("localvit_tiny", depth=2)
    kernels = depthwise_kernels(model)
    assert len(kernels) == 2 and kernels[0].kernels.shape[1:] == (3, 3)
    assert 0 < kernels[0].center_share() < 1
    ours, host, label = localvit_erfs("localvit_tiny", model, inp(model, photo))
    assert host is not None and "DeiT host" in label and len(host) == len(ours)
    # after the first block the locality FFN has mixed neighbouring patches: the centre token takes more from
    # other patches than the plain-MLP host's first block, whose only mixing is attention
    assert ours[0].outside_share(16) > host[0].outside_share(16) > 0  # measured 0.135 vs 0.088


def _check_png(path):
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0.01


def test_cli_viz_writes_every_figure(tmp_path, capsys):
    from locvit.cli import main

    out = tmp_path / "figs"
    rc = main(["viz", "--model", "regionvit_tiny", "focal_tiny", "vvt_tiny", "localvit_t2t_vit_7",
               "--img-size", str(SIZE), str(SIZE), "--output", str(out)])
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([
        "regionvit_tiny_regional_local_attention.png", "regionvit_tiny_erf.png",
        "focal_tiny_focal_levels.png", "focal_tiny_erf.png", "vvt_tiny_vicinity.png", "vvt_tiny_erf.png",
        "localvit_t2t_vit_7_locality.png", "localvit_t2t_vit_7_erf.png", "erf_comparison.png"])
    for p in out.iterdir():
        _check_png(p)
    assert "wrote 9 figures" in capsys.readouterr().out


def test_viz_bad_query_names_the_fix(tmp_path):
    from locvit.viz import render

    with pytest.raises(ValueError, match=r"query pixel \(500, 3\) lies outside the 112x112 model input"):
        render(["regionvit_tiny"], tmp_path, query=(500, 3), img_size=(SIZE, SIZE), erf=False, log=lambda s: None)

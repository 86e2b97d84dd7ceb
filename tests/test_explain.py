"""``locvit predict --explain``: Grad-CAM on a stage map with no per-model code, one model per family; where a model
of each family trained to name the colour of one square looks; the command's maps and its bad input."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import locvit
from locvit import cli
from locvit.labels import label_metadata
from locvit.predict.explain import as_map, grad_cam
from locvit.weights.checkpoint import save_checkpoint

FAMILIES = {
    "localvit_tiny": dict(depth=2, embed_dim=32, num_heads=2, reduction=4),
    "vvt_tiny": dict(embed_dims=[8, 16, 16, 32], num_heads=[1, 2, 2, 4], depths=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2]),
    "focal_tiny": dict(embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), mlp_ratio=2.0),
    "regionvit_tiny": dict(embed_dim=(16, 32, 64, 64), num_heads=(2, 2, 4, 4), depth=(1, 1, 1, 1)),
}
COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0], [1.0, 1.0, 0.1]])


def squares(n, size, side, gen):
    """Noise images with one square whose colour is the class."""
    x = torch.rand(n, 3, size, size, generator=gen) * 0.3
    y = torch.randint(0, len(COLOURS), (n,), generator=gen)
    pos = torch.randint(0, size - side, (n, 2), generator=gen)
    for i in range(n):
        r, c = pos[i].tolist()
        x[i, :, r:r + side, c:c + side] = COLOURS[y[i]][:, None, None]
    return (x - 0.5) / 0.25, y, pos


@pytest.mark.parametrize("name", list(FAMILIES))
def test_grad_cam_on_the_last_stage_map_of_every_family(name):
    torch.manual_seed(0)
    model = locvit.create_model(name, num_classes=4, img_size=64, **FAMILIES[name]).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    cam, logits, target, layer = grad_cam(model, x)
    with torch.no_grad():
        ref = model(x)
        grid = model.forward_intermediates(x, indices=1, intermediates_only=True)[-1]
    assert torch.allclose(logits, ref, atol=1e-6)  # the model's own forward, hooks only watch
    assert target == int(ref.argmax()) and tuple(cam.shape) == tuple(grid.shape[-2:])
    assert float(cam.min()) >= 0 and float(cam.max()) == pytest.approx(1.0) and model.get_submodule(layer)
    other, _, t2, _ = grad_cam(model, x, target=(target + 1) % 4)
    assert t2 == (target + 1) % 4 and not torch.allclose(other, cam)
    earlier, _, _, _ = grad_cam(model, x, stage=-2)  # the stage before: its own grid (the same on LocalViT)
    assert tuple(earlier.shape) == tuple(model.forward_intermediates(x, intermediates_only=True)[-2].shape[-2:])
    with pytest.raises(ValueError, match="stage maps"):
        grad_cam(model, x, stage=9)


def test_as_map_reads_every_layout():
    m = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    tokens = m.flatten(2).transpose(1, 2)
    assert torch.equal(as_map(m, 3, 4, 5), m)
    assert torch.equal(as_map(m.permute(0, 2, 3, 1), 3, 4, 5), m)
    assert torch.equal(as_map(torch.cat([torch.zeros(2, 1, 3), tokens], 1), 3, 4, 5), m)  # a class token in front
    assert as_map(torch.zeros(2, 7, 3), 3, 4, 5) is None


# One small model per family, trained to name the colour of one square on noise, and the stage map its evidence is
# read from. The pyramid models have three stages (a 96 input: 6 x 6 last map, 12 x 12 the one before). The last maps
# of Focal and VVT are too mixed to localise (docs/predict.md, "--explain"), so they are read one stage earlier;
# RegionViT's last map (the patch map entering its last stage) localises and is read as users get it, and so are
# LocalViT's patch tokens (4 x 4 at 64 pixels). Bounds: mean map inside the square minus outside > margin; at least
# `hits` of the 16 maps peak on a cell that overlaps the square.
TRAINED = {
    "localvit_tiny": dict(size=64, side=20, steps=60, stage=-1, kw=FAMILIES["localvit_tiny"], margin=0.1, hits=9),
    "vvt_tiny": dict(size=96, side=32, steps=80, stage=-2, margin=0.0, hits=6,
                     kw=dict(embed_dims=[16, 32, 32], num_heads=[1, 2, 2], depths=[1, 1, 1], mlp_ratios=[2, 2, 2],
                             sr_ratios=[1, 1, 1], fr_ratios=[2, 2, 2])),
    "focal_tiny": dict(size=96, side=32, steps=80, stage=-2, margin=0.04, hits=9,
                       kw=dict(embed_dim=16, depths=(1, 1, 1), num_heads=(1, 2, 2), mlp_ratio=2.0)),
    "regionvit_tiny": dict(size=96, side=32, steps=80, stage=-1, margin=0.04, hits=6,
                           kw=dict(embed_dim=(16, 32, 64), num_heads=(2, 2, 4), depth=(1, 1, 1),
                                   downsampling=("c", "sc", "sc"))),
}


def localisation(name, seed=0):
    """Train ``TRAINED[name]`` briefly on squares (seed ``seed``); return its accuracy on 16 new images, the map's
    mean inside minus outside the square per image, and whether each map peaks on a cell of the square."""
    cfg = TRAINED[name]
    size, side = cfg["size"], cfg["side"]
    torch.manual_seed(seed)
    model = locvit.create_model(name, num_classes=4, img_size=size, **cfg["kw"])
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg["steps"]):
        x, y, _ = squares(16, size, side, gen)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y, pos = squares(16, size, side, gen)
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    margins, hits = [], []
    for i in range(len(x)):
        cam, _, _, _ = grad_cam(model, x[i:i + 1], stage=cfg["stage"])
        up = torch.nn.functional.interpolate(cam[None, None], size=(size, size), mode="bilinear")[0, 0].numpy()
        inside = np.zeros((size, size), bool)
        r, c = pos[i].tolist()
        inside[r:r + side, c:c + side] = True
        margins.append(float(up[inside].mean() - up[~inside].mean()))
        cell = size / cam.shape[0]  # a square grid: does the peak cell's pixel range overlap the square's?
        pr, pc = np.unravel_index(int(cam.argmax()), tuple(cam.shape))
        hits.append(bool(pr * cell < r + side and (pr + 1) * cell > r and pc * cell < c + side and (pc + 1) * cell > c))
    return accuracy, margins, hits


@pytest.mark.parametrize("name", list(TRAINED))
def test_map_lies_on_the_square_that_carries_the_class(name):
    """A model of each family that learnt to name the colour of one square on noise: the class's evidence is on the
    square (the issue's done-when for --explain)."""
    accuracy, margins, hits = localisation(name)
    assert accuracy >= 0.9  # it learnt the task, so its evidence means something
    cfg = TRAINED[name]
    assert np.mean(margins) > cfg["margin"] and sum(hits) >= cfg["hits"], (np.mean(margins), sum(hits))


def test_cli_explain_writes_a_map_per_image_and_the_mechanism(tmp_path, capsys):
    kw = dict(depth=1, embed_dim=32, num_heads=2, reduction=4)
    torch.manual_seed(0)
    model = locvit.create_model("localvit_tiny", num_classes=3, img_size=32, **kw)
    save_checkpoint(model, tmp_path / "w.safetensors", metadata=label_metadata(["ant", "bee", "cat"]))
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
            tmp_path / f"im{i}.png")
    base = ["predict", "--model", "localvit_tiny", "--model-kwargs", *(f"{k}={v}" for k, v in kw.items()),
            "--img-size", "32", "--checkpoint", str(tmp_path / "w.safetensors"), "--workers", "0",
            str(tmp_path / "im0.png"), str(tmp_path / "im1.png")]
    out = tmp_path / "out"
    assert cli.main([*base, "--output", str(out), "--explain", "--target", "bee", "--mechanism"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("evidence for 'bee' peaks at row") == 2
    assert sorted(p.name for p in (out / "explain").iterdir()) == ["0000_im0.png", "0001_im1.png"]
    assert len(list((out / "mechanism").iterdir())) == 2
    assert Image.open(out / "explain" / "0000_im0.png").width > 300
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "predictions.jsonl").read_text().splitlines()[0])["names"][0] in ("ant", "bee", "cat")
    for args, message in [(["--explain"], "pass --output DIR"),
                          (["--output", str(tmp_path / "o2"), "--target", "1"], "go with --explain"),
                          (["--output", str(tmp_path / "o2"), "--explain-stage", "-2"], "go with --explain"),
                          (["--output", str(tmp_path / "o2"), "--explain", "--explain-stage", "-9"], "1 stage maps"),
                          (["--output", str(tmp_path / "o2"), "--explain", "--target", "dog"], "not a class"),
                          (["--output", str(tmp_path / "o2"), "--explain", "--target", "7"], "--target 7")]:
        assert cli.main([*base, *args]) == 2
        assert message in capsys.readouterr().err, args
    assert not (tmp_path / "o2").exists()

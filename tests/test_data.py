"""The data path users take: a real folder of JPEG/PNG/TIFF files in every mode Pillow reads (and some it cannot),
DataLoader worker processes, and the shipped recipes' augmentation as configured."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from locvit.data.datasets import Unreadable, build_dataset, to_rgb
from locvit.data.loader import Batch, build_loader, build_transform, default_workers
from locvit.engine.config import CONFIG_DIR, build_config

DATA_CFG = dict(input_size=(3, 32, 32), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                interpolation="bicubic", crop_pct=0.875)


def odd_image_folder(root: Path) -> dict[str, Path]:
    """train/ and val/ with two classes of 24x24 images in many modes, plus files that cannot be decoded."""
    rng = np.random.default_rng(0)
    files: dict[str, Path] = {}
    for split in ("train", "val"):
        for c, ch in (("cat", 0), ("dog", 2)):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(6):
                arr = (rng.random((24, 24, 3)) * 120).astype(np.uint8)
                arr[..., ch] = 255
                Image.fromarray(arr).save(d / f"{i}.jpg" if i % 2 else d / f"{i}.png")
    d = root / "train" / "cat"
    ramp16 = (np.arange(24 * 24).reshape(24, 24) * 100).astype(np.uint16)  # 0 .. 57,500 of 65,535
    Image.fromarray(ramp16).save(files.setdefault("gray16", d / "gray16.png"))
    Image.fromarray((rng.random((24, 24, 4)) * 255).astype(np.uint8)).convert("CMYK").save(
        files.setdefault("cmyk", d / "cmyk.jpg"))
    rgba = (rng.random((24, 24, 4)) * 255).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(files.setdefault("rgba", d / "a.png"))
    Image.fromarray((rng.random((24, 24)) * 255).astype(np.uint8), "L").save(files.setdefault("gray", d / "g.jpg"))
    Image.new("P", (24, 24)).save(files.setdefault("palette", d / "p.png"), transparency=0)
    Image.fromarray(np.full((24, 24), 70000, np.int32), "I").save(files.setdefault("int32", d / "i.tif"))
    files["corrupt"] = d / "corrupt.jpg"
    files["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = (root / "train" / "dog" / "0.png").read_bytes()
    files["truncated"] = root / "train" / "dog" / "truncated.png"
    files["truncated"].write_bytes(good[: len(good) // 3])
    return files


def test_every_image_mode_becomes_8bit_rgb_with_its_range_kept(tmp_path):
    files = odd_image_folder(tmp_path)
    for kind in ("gray16", "cmyk", "rgba", "gray", "palette", "int32"):
        with Image.open(files[kind]) as im:
            rgb = to_rgb(im)
        assert rgb.mode == "RGB" and rgb.size == (24, 24), kind
    with Image.open(files["gray16"]) as im:
        arr = np.asarray(to_rgb(im))[..., 0].astype(int)
    # a 16-bit ramp keeps its shape (Image.convert('RGB') alone clips every value above 255 to white)
    assert arr.min() == 0 and 200 < arr.max() < 255 and len(np.unique(arr)) > 100
    with Image.open(files["int32"]) as im:  # 70,000 in a 32-bit image is dark, not saturated
        assert np.asarray(to_rgb(im)).max() < 10


def test_batch_crosses_worker_processes():
    b = Batch(torch.zeros(2, 3), torch.tensor([1, 2]), [Unreadable(4, "x.jpg", "OSError: broken")])
    c = pickle.loads(pickle.dumps(b))
    images, targets = c
    assert torch.equal(targets, b[1]) and c.skipped == 1 and c.unreadable[0].path == "x.jpg"


@pytest.mark.parametrize("repeats", [1, 3])
def test_folder_through_worker_processes_with_the_recipe_augmentation(tmp_path, repeats):
    """What `locvit train --data DIR` does by default: worker processes (default_workers() >= 1; 2 here),
    RandAugment, colour jitter, random erasing; each unreadable file is reported once, by name."""
    files = odd_image_folder(tmp_path)
    cfg = build_config("localvit_in1k", {"data": str(tmp_path)})
    assert cfg.workers == default_workers() and cfg.aa and cfg.reprob > 0
    ds = build_dataset(str(tmp_path), "train", seed=0)
    aug = cfg.augmentation()
    ds.transform = build_transform(DATA_CFG, True, aug)
    loader = build_loader(ds, 4, training=True, workers=2, repeats=repeats)
    seen, bad, bad_paths = 0, {}, []
    loader.sampler.set_epoch(1)
    ds.set_epoch(1)
    for batch in loader:
        images, targets = batch
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 32, 32) and torch.isfinite(images).all()
        seen += images.shape[0]
        for u in batch.unreadable:
            bad[u.index] = u.path
            bad_paths.append(u.path)
    assert sorted(set(bad.values())) == sorted({str(files["corrupt"]), str(files["truncated"])})
    assert len(bad_paths) <= 2 * repeats  # a repeated sample is drawn again, but counted once by its index
    assert seen + len(bad_paths) == len(loader.sampler.order())


@pytest.mark.parametrize("recipe", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_shipped_recipe_augmentation_runs_at_every_magnitude(recipe):
    """Every op of each shipped recipe's RandAugment at magnitudes 0 and 10 (the extremes mstd0.5 reaches), then
    many full draws. Pillow >= 13 refuses posterize(bits=0), which RandAugment's inc1 reaches at magnitude 10."""
    cfg = build_config(recipe, {"data": "digits"})
    aug = cfg.augmentation()
    t = build_transform(DATA_CFG, True, aug)
    img = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8))
    ra = [x for x in t.transforms if hasattr(x, "ops")]
    assert ra or not cfg.aa
    for op in (op for r in ra for op in r.ops):
        saved = (op.magnitude, op.magnitude_std, op.prob)
        for m in (0, 10):
            op.magnitude, op.magnitude_std, op.prob = m, 0, 1.0
            assert op(img).size == img.size, op.name
        op.magnitude, op.magnitude_std, op.prob = saved
    posterize = [op for r in ra for op in r.ops if op.name == "PosterizeIncreasing"]
    if posterize:  # at bits=0, the result the papers' Pillow gave: a black image
        op = posterize[0]
        op.magnitude, op.magnitude_std, op.prob = 10, 0, 1.0
        assert np.asarray(op(img)).max() == 0
    torch.manual_seed(0)
    for _ in range(300):
        assert t(img).shape == (3, 32, 32)

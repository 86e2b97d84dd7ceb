"""Semantic segmentation with a segmentation_models_pytorch model on a locvit encoder: a few steps, then evaluation.

    python examples/segmentation.py --model vvt_tiny --arch FPN --steps 10 --output runs/seg
    python examples/segmentation.py --model focal_tiny --arch UPerNet --data /data/my_masks --classes 5

``--data DIR`` holds ``images/`` and ``masks/``: one mask per image with the same stem, a single-channel PNG of
class indices (255 = ignore). Without ``--data`` the script writes a small synthetic dataset (rectangles and
discs on noise; image sizes not divisible by 32) into ``OUTPUT/synthetic_seg`` and uses it, so it runs anywhere,
on a CPU, in a few minutes.

The encoder is smp's timm-universal encoder ``tu-<model>`` (``import locvit`` registers the names with timm);
:func:`locvit.dense.smp_model` wraps the model so that any input size works (padded to a multiple of 32, the
output cropped back). Training uses random crops of ``--crop``; evaluation runs on the whole held-out images and
reports mIoU and pixel accuracy (``OUTPUT/metrics.json``; weights in ``OUTPUT/segmenter.safetensors``).

smp's ``FPN`` is the Semantic FPN head of the PVT/VVT ADE20K protocol; ``UPerNet`` is the Swin/Focal one.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torchvision.transforms.functional import pil_to_tensor

import locvit
from locvit import dense


# --- data -------------------------------------------------------------------------------------------------------
def make_synthetic_segmentation(root: Path, num_images: int = 24, seed: int = 0) -> Path:
    """Write ``root/images/*.png`` and ``root/masks/*.png`` (0 background, 1 rectangle, 2 disc)."""
    rng = random.Random(seed)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        h, w = rng.randrange(97, 161, 2), rng.randrange(121, 201, 2)
        noise = torch.randint(0, 60, (h, w, 3), generator=torch.Generator().manual_seed(seed * 1000 + i))
        img, mask = Image.fromarray(noise.to(torch.uint8).numpy()), Image.new("L", (w, h), 0)
        for _ in range(rng.randint(1, 3)):
            cls = rng.choice((1, 2))
            bw, bh = rng.randint(w // 6, w // 2), rng.randint(h // 6, h // 2)
            x0, y0 = rng.randint(0, w - bw - 1), rng.randint(0, h - bh - 1)
            color = tuple(rng.randint(120, 255) for _ in range(3))
            shape = ImageDraw.Draw(img).rectangle if cls == 1 else ImageDraw.Draw(img).ellipse
            shape([x0, y0, x0 + bw, y0 + bh], fill=color)
            (ImageDraw.Draw(mask).rectangle if cls == 1 else ImageDraw.Draw(mask).ellipse)(
                [x0, y0, x0 + bw, y0 + bh], fill=cls)
        img.save(root / "images" / f"{i:04d}.png")
        mask.save(root / "masks" / f"{i:04d}.png")
    return root


class SegFolder(torch.utils.data.Dataset):
    """``images/<stem>.*`` with ``masks/<stem>.png``; returns a normalised float image and a long mask."""

    def __init__(self, root: Path, stems: list[str] | None, mean, std, crop: tuple[int, int] | None = None):
        self.root = Path(root)
        files = {p.stem: p for p in sorted((self.root / "images").iterdir()) if p.is_file()}
        self.stems = stems if stems is not None else [s for s in files if (self.root / "masks" / f"{s}.png").is_file()]
        self.files, self.crop = files, crop
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, idx: int):
        stem = self.stems[idx]
        img = pil_to_tensor(Image.open(self.files[stem]).convert("RGB")).float() / 255
        mask = pil_to_tensor(Image.open(self.root / "masks" / f"{stem}.png"))[0].long()
        img = (img - self.mean) / self.std
        if self.crop:  # random crop, zero/ignore padding when the image is smaller
            ch, cw = self.crop
            H, W = mask.shape
            ph, pw = max(0, ch - H), max(0, cw - W)
            img, mask = F.pad(img, (0, pw, 0, ph)), F.pad(mask, (0, pw, 0, ph), value=255)
            y, x = random.randint(0, mask.shape[0] - ch), random.randint(0, mask.shape[1] - cw)
            img, mask = img[:, y:y + ch, x:x + cw], mask[y:y + ch, x:x + cw]
        return img, mask


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: SegFolder, num_classes: int, device: torch.device) -> dict:
    """mIoU (over classes present in prediction or ground truth) and pixel accuracy, ignoring label 255."""
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for i in range(len(dataset)):
        img, mask = dataset[i]
        pred = model(img[None].to(device)).argmax(1)[0].cpu()
        assert pred.shape == mask.shape, (pred.shape, mask.shape)
        keep = mask != 255
        conf += torch.bincount(mask[keep] * num_classes + pred[keep], minlength=num_classes ** 2).view(
            num_classes, num_classes)
    inter = conf.diag().float()
    union = conf.sum(0) + conf.sum(1) - conf.diag()
    iou = inter / union.clamp(min=1)
    present = union > 0
    return dict(mIoU=float(iou[present].mean()) if present.any() else float("nan"),
                pixel_acc=float(inter.sum() / conf.sum().clamp(min=1)), IoU_per_class=iou.tolist())


# --- main -------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="vvt_tiny", help="a locvit pyramid model (the encoder)")
    p.add_argument("--arch", default="FPN", help="smp architecture: FPN (Semantic FPN), UPerNet, Unet, ...")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="encoder model arguments (YAML values), e.g. depths=[1,1,1,1]")
    p.add_argument("--checkpoint", help="classification weights for the encoder (official or locvit format)")
    p.add_argument("--data", help="folder with images/ and masks/; synthetic data when absent")
    p.add_argument("--classes", type=int, default=None, help="number of classes (default: from the data)")
    p.add_argument("--num-images", type=int, default=24, help="size of the synthetic dataset")
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--crop", type=int, nargs=2, default=(96, 120), metavar=("H", "W"), help="training crop")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=6e-5, help="AdamW learning rate (Swin/Focal ADE20K: 6e-5, wd 0.01)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--output", default="runs/segmentation")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _parse_kv(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--model-kwargs expects KEY=VALUE, got {item!r}")
        out[key.replace("-", "_")] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.data) if args.data else make_synthetic_segmentation(out / "synthetic_seg", args.num_images,
                                                                         args.seed)
    if not args.data:
        print(f"no --data: wrote a synthetic dataset of {args.num_images} images to {root}")
    device = torch.device(args.device)
    stems = SegFolder(root, None, (0, 0, 0), (1, 1, 1)).stems
    if not stems:
        sys.exit(f"no image with a mask found under {root}/images and {root}/masks")
    num_classes = args.classes
    if num_classes is None:
        labels = torch.cat([pil_to_tensor(Image.open(root / "masks" / f"{s}.png")).flatten().unique() for s in stems])
        num_classes = int(labels[labels != 255].max()) + 1

    model = dense.smp_model(args.arch, args.model, classes=num_classes, checkpoint=args.checkpoint,
                            **_parse_kv(args.model_kwargs)).to(device)
    cfg = model.model.encoder.model.pretrained_cfg
    n_val = max(1, round(len(stems) * args.val_fraction))
    train_set = SegFolder(root, stems[:-n_val], cfg["mean"], cfg["std"], tuple(args.crop))
    val_set = SegFolder(root, stems[-n_val:], cfg["mean"], cfg["std"])
    print(f"smp.{args.arch} with encoder tu-{args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
          f"parameters), {num_classes} classes, {len(train_set)} training / {len(val_set)} evaluation images")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=False)
    history, step, t0 = [], 0, time.time()
    model.train()
    while step < args.steps:
        for images, masks in loader:
            logits = model(images.to(device))
            loss = F.cross_entropy(logits, masks.to(device), ignore_index=255)
            if not torch.isfinite(loss):
                sys.exit(f"step {step}: non-finite loss {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            history.append({"step": step, "loss": loss.item()})
            print(f"step {step}/{args.steps}  loss {loss.item():.4f}", flush=True)
            if step >= args.steps:
                break
    train_s = time.time() - t0
    scores = evaluate(model, val_set, num_classes, device)
    print(f"evaluation on {len(val_set)} images: mIoU {scores['mIoU']:.3f}, pixel accuracy {scores['pixel_acc']:.3f}")
    metrics = dict(model=args.model, arch=args.arch, steps=step, train_seconds=round(train_s, 1), history=history,
                   eval=scores, load_report=str(model.model.load_report) if args.checkpoint else None)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    locvit.save_checkpoint(model.model, out / "segmenter.safetensors")
    print(f"wrote {out / 'metrics.json'} and {out / 'segmenter.safetensors'}")
    return metrics


if __name__ == "__main__":
    main()

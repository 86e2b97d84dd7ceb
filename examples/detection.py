"""Mask R-CNN (torchvision) with a locvit backbone on a COCO-format folder: a few training steps, then evaluation.

    python examples/detection.py --model regionvit_tiny --steps 10 --output runs/det
    python examples/detection.py --model vvt_tiny --data /data/coco_subset --checkpoint vvt_tiny.pth

``--data DIR`` holds ``annotations.json`` (COCO instances format: polygon segmentations, or RLE when pycocotools is
installed) and the images under ``images/`` (or pass ``--ann`` and ``--images``). Without ``--data`` the script
writes a small synthetic dataset (rectangles and discs on noise, non-square images of sizes not divisible by 32)
into ``OUTPUT/synthetic_coco`` and uses it, so it runs anywhere, on a CPU, in a few minutes.

The last ``--val-fraction`` of the images are held out and scored with box and mask AP at IoU 0.5 (a small,
dependency-free evaluation; use pycocotools' COCOeval for the official COCO metrics). ``OUTPUT/metrics.json``
gets the losses and the scores, ``OUTPUT/detector.safetensors`` the weights.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torchvision.transforms.functional import pil_to_tensor

import locvit
from locvit import dense


# --- data -------------------------------------------------------------------------------------------------------
def make_synthetic_coco(root: Path, num_images: int = 24, seed: int = 0) -> Path:
    """Write ``root/images/*.png`` and ``root/annotations.json``: 1-3 rectangles ("box") and discs ("disc") per
    image, with polygon segmentations; image sizes vary and are not multiples of 32."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(num_images):
        h, w = rng.randrange(97, 161, 2), rng.randrange(121, 201, 2)
        noise = torch.randint(0, 60, (h, w, 3), generator=torch.Generator().manual_seed(seed * 1000 + i))
        img = Image.fromarray(noise.to(torch.uint8).numpy())
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(1, 3)):
            cat = rng.choice((1, 2))
            bw, bh = rng.randint(w // 6, w // 2), rng.randint(h // 6, h // 2)
            x0, y0 = rng.randint(0, w - bw - 1), rng.randint(0, h - bh - 1)
            color = tuple(rng.randint(120, 255) for _ in range(3))
            if cat == 1:
                poly = [x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]
            else:
                cx, cy = x0 + bw / 2, y0 + bh / 2
                poly = [v for k in range(24) for v in (cx + bw / 2 * math.cos(2 * math.pi * k / 24),
                                                        cy + bh / 2 * math.sin(2 * math.pi * k / 24))]
            draw.polygon(poly, fill=color)
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=cat, iscrowd=0, area=float(bw * bh),
                             bbox=[float(x0), float(y0), float(bw), float(bh)], segmentation=[poly]))
        name = f"{i:04d}.png"
        img.save(root / "images" / name)
        images.append(dict(id=i + 1, file_name=name, height=h, width=w))
    coco = dict(images=images, annotations=anns, categories=[dict(id=1, name="box"), dict(id=2, name="disc")])
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


class CocoInstances(torch.utils.data.Dataset):
    """COCO instances -> (float image in [0, 1], torchvision target with boxes xyxy, labels 1..K, masks)."""

    def __init__(self, ann_file: Path, image_dir: Path, image_ids: list[int] | None = None):
        coco = json.loads(Path(ann_file).read_text())
        self.image_dir = Path(image_dir)
        self.images = {im["id"]: im for im in coco["images"]}
        self.ids = image_ids if image_ids is not None else sorted(self.images)
        self.cat_to_label = {c["id"]: i + 1 for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
        self.class_names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
        self.anns: dict[int, list[dict]] = {}
        for a in coco["annotations"]:
            if not a.get("iscrowd", 0):
                self.anns.setdefault(a["image_id"], []).append(a)

    def __len__(self) -> int:
        return len(self.ids)

    def _mask(self, seg, h: int, w: int) -> torch.Tensor:
        if isinstance(seg, list):  # polygons
            m = Image.new("L", (w, h), 0)
            for poly in seg:
                ImageDraw.Draw(m).polygon([float(v) for v in poly], fill=1)
            return pil_to_tensor(m)[0]
        try:
            from pycocotools import mask as mask_utils
        except ImportError:
            sys.exit("this dataset has RLE segmentations: pip install pycocotools")
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg.get("counts"), list) else seg
        return torch.from_numpy(mask_utils.decode(rle)).to(torch.uint8)

    def __getitem__(self, idx: int):
        info = self.images[self.ids[idx]]
        img = Image.open(self.image_dir / info["file_name"]).convert("RGB")
        w, h = img.size
        boxes, labels, masks = [], [], []
        for a in self.anns.get(info["id"], []):
            x, y, bw, bh = a["bbox"]
            if bw < 1 or bh < 1:
                continue
            boxes.append([x, y, x + bw, y + bh])
            labels.append(self.cat_to_label[a["category_id"]])
            masks.append(self._mask(a["segmentation"], h, w))
        target = dict(
            boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            labels=torch.tensor(labels, dtype=torch.int64),
            masks=torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.uint8),
        )
        return pil_to_tensor(img).float() / 255, target


# --- evaluation -----------------------------------------------------------------------------------------------
def average_precision(scores: list[float], matched: list[bool], num_gt: int) -> float:
    """All-point interpolated AP (PASCAL VOC 2010+) of scored detections (any order) against ``num_gt`` objects."""
    if num_gt == 0:
        return float("nan")
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    tp = torch.tensor([float(matched[i]) for i in order])
    if tp.numel() == 0:
        return 0.0
    ctp, cfp = tp.cumsum(0), (1 - tp).cumsum(0)
    recall = torch.cat([torch.zeros(1), ctp / num_gt, torch.ones(1)])
    precision = torch.cat([torch.ones(1), ctp / (ctp + cfp), torch.zeros(1)])
    precision = precision.flip(0).cummax(0).values.flip(0)
    return float(((recall[1:] - recall[:-1]) * precision[1:]).sum())


def _mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    p, g = pred.flatten(1).float(), gt.flatten(1).float()
    inter = p @ g.T
    return inter / (p.sum(1)[:, None] + g.sum(1)[None, :] - inter).clamp(min=1)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: CocoInstances, device: torch.device, iou: float = 0.5) -> dict:
    """Box and mask AP at ``iou`` per class and their mean over classes with ground truth."""
    from torchvision.ops import box_iou

    model.eval()
    num_classes = len(dataset.class_names)
    det = {k: {c: ([], []) for c in range(1, num_classes + 1)} for k in ("box", "mask")}
    num_gt = {c: 0 for c in range(1, num_classes + 1)}
    for i in range(len(dataset)):
        img, tgt = dataset[i]
        out = model([img.to(device)])[0]
        for c in num_gt:
            gt_sel, pr_sel = tgt["labels"] == c, out["labels"].cpu() == c
            num_gt[c] += int(gt_sel.sum())
            scores = out["scores"].cpu()[pr_sel].tolist()
            ious = {"box": box_iou(out["boxes"].cpu()[pr_sel], tgt["boxes"][gt_sel]),
                    "mask": _mask_iou(out["masks"].cpu()[pr_sel, 0] > 0.5, tgt["masks"][gt_sel].bool())}
            for kind, m in ious.items():
                taken = torch.zeros(m.shape[1], dtype=torch.bool)
                for j in sorted(range(len(scores)), key=lambda j: -scores[j]):  # greedy, best score first
                    ok = False
                    if m.shape[1]:
                        cand = m[j].masked_fill(taken, -1)
                        best = int(cand.argmax())
                        if cand[best] >= iou:
                            taken[best], ok = True, True
                    det[kind][c][0].append(scores[j])
                    det[kind][c][1].append(ok)
    result = {}
    for kind in ("box", "mask"):
        aps = {dataset.class_names[c - 1]: average_precision(*det[kind][c], num_gt[c]) for c in num_gt}
        valid = [v for v in aps.values() if not math.isnan(v)]
        result[f"{kind}_AP{int(iou * 100)}"] = sum(valid) / len(valid) if valid else float("nan")
        result[f"{kind}_AP{int(iou * 100)}_per_class"] = aps
    return result


# --- main -------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="regionvit_tiny", help="a locvit pyramid model")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="model arguments (YAML values), e.g. depth=[1,1,1,1] window_size=14")
    p.add_argument("--checkpoint", help="classification weights for the backbone (official or locvit format)")
    p.add_argument("--data", help="COCO-format folder (annotations.json + images/); synthetic data when absent")
    p.add_argument("--ann", help="annotation file (overrides DATA/annotations.json)")
    p.add_argument("--images", help="image folder (overrides DATA/images)")
    p.add_argument("--num-images", type=int, default=24, help="size of the synthetic dataset")
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (1e-4, weight decay 0.05: the papers)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--min-size", type=int, default=128, help="shorter image side after resizing (COCO: 800)")
    p.add_argument("--max-size", type=int, default=224, help="longer side limit (COCO: 1333)")
    p.add_argument("--fpn-channels", type=int, default=256)
    p.add_argument("--proposals", type=int, default=500, help="RPN proposals kept per image in training (COCO: 2000)")
    p.add_argument("--rois-per-image", type=int, default=128, help="RoIs sampled per image for the heads (COCO: 512)")
    p.add_argument("--output", default="runs/detection")
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
    torch.manual_seed(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.data or (args.ann and args.images):
        ann = Path(args.ann or Path(args.data) / "annotations.json")
        img_dir = Path(args.images or Path(args.data) / "images")
    else:
        root = make_synthetic_coco(out / "synthetic_coco", args.num_images, args.seed)
        ann, img_dir = root / "annotations.json", root / "images"
        print(f"no --data: wrote a synthetic COCO dataset of {args.num_images} images to {root}")
    ids = sorted(CocoInstances(ann, img_dir).ids)
    n_val = max(1, round(len(ids) * args.val_fraction))
    train_set, val_set = CocoInstances(ann, img_dir, ids[:-n_val]), CocoInstances(ann, img_dir, ids[-n_val:])
    classes = train_set.class_names
    print(f"{len(train_set)} training / {len(val_set)} evaluation images, classes: {', '.join(classes)}")

    device = torch.device(args.device)
    model = dense.mask_rcnn(args.model, num_classes=len(classes) + 1, out_channels=args.fpn_channels,
                            checkpoint=args.checkpoint, model_kwargs=_parse_kv(args.model_kwargs),
                            min_size=args.min_size, max_size=args.max_size,
                            rpn_pre_nms_top_n_train=2 * args.proposals, rpn_post_nms_top_n_train=args.proposals,
                            box_batch_size_per_image=args.rois_per_image).to(device)
    n_backbone = sum(p.numel() for p in model.backbone.body.parameters())
    print(f"Mask R-CNN with {args.model} ({n_backbone / 1e6:.2f}M backbone parameters, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M in all)")

    # the papers' recipe: AdamW, lr 1e-4, weight decay 0.05 (no decay on norms, biases and position tables)
    body = model.backbone.body.model
    no_decay = set(body.no_weight_decay()) if hasattr(body, "no_weight_decay") else set()
    decay, rest = [], []
    for name, p in model.named_parameters():
        short = name.removeprefix("backbone.body.model.")
        (rest if p.ndim <= 1 or short in no_decay else decay).append(p)
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=args.weight_decay), dict(params=rest, weight_decay=0.0)],
                            lr=args.lr)
    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                         collate_fn=lambda batch: tuple(zip(*batch)))
    history, step, t0 = [], 0, time.time()
    model.train()
    while step < args.steps:
        for images, targets in loader:
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                sys.exit(f"step {step}: non-finite loss {({k: v.detach().item() for k, v in losses.items()})}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            values = {k: v.detach().item() for k, v in losses.items()}
            history.append({"step": step, "loss": sum(values.values()), **values})
            print(f"step {step}/{args.steps}  loss {sum(values.values()):.4f}  "
                  + "  ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in values.items()), flush=True)
            if step >= args.steps:
                break
    train_s = time.time() - t0

    scores = evaluate(model, val_set, device)
    print(f"evaluation on {len(val_set)} images: box AP50 {scores['box_AP50']:.3f}, "
          f"mask AP50 {scores['mask_AP50']:.3f}")
    metrics = dict(model=args.model, steps=step, train_seconds=round(train_s, 1), history=history, eval=scores,
                   load_report=str(model.backbone.load_report) if args.checkpoint else None)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    locvit.save_checkpoint(model, out / "detector.safetensors")
    print(f"wrote {out / 'metrics.json'} and {out / 'detector.safetensors'}")
    return metrics


if __name__ == "__main__":
    main()

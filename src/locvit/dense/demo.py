"""``locvit demo --task detect|segment``: a small backbone of each family trained on generated shapes, on the CPU.

The data are written by :mod:`locvit.data.synthetic` into the run directory in the standard layouts (COCO JSON,
ADE20K folders) and read by the same commands a user runs (``locvit detect train`` / ``locvit segment train``
through :func:`locvit.dense.detect.train_run` / :func:`locvit.dense.segment.train_run`), with the
default pipeline: DataLoader workers, flips, (segmentation) random rescale, crops and photometric distortion.
Mask R-CNN is scored with COCOeval (box and mask AP), Semantic FPN with mIoU; the table is printed and written to
``results.md`` / ``results.json``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from locvit.data.synthetic import make_detection_data, make_segmentation_data
from locvit.files import atomic_write_text
from locvit.models import DENSE_DEMO_MODELS

__all__ = ["DENSE_DEMO_MODELS", "DETECT", "SEGMENT", "run_dense_demo"]

DETECT: dict[str, Any] = dict(
    detector="mask_rcnn", epochs=6, batch_size=4, lr=5e-4, weight_decay=0.05, warmup_iters=50, lr_steps=[],
    drop_path=0.0, min_size=[128], max_size=192, fpn_channels=64, box_head_dim=256, mask_head_channels=[64, 64],
    detector_kwargs=dict(rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
                         rpn_post_nms_top_n_test=100, box_batch_size_per_image=128, box_detections_per_img=50),
    eval_interval=6, workers=2, amp="off", tensorboard=False, log_interval=5)
SEGMENT: dict[str, Any] = dict(
    head="fpn", num_classes=3, epochs=12, batch_size=8, lr=1e-3, weight_decay=0.01, sched="poly", poly_power=1.0,
    warmup_iters=30, warmup_ratio=1e-3, drop_path=0.0, decoder_channels=64, crop_size=[96, 96], scale=[192, 128],
    ratio_range=[0.75, 1.5], test_scale=[192, 128], eval_interval=12, workers=2, amp="off", tensorboard=False,
    log_interval=5)
DATA = dict(num_train=96, num_val=32, size=128)


def run_dense_demo(task: str, output: str | Path = "runs/demo_detect", epochs: int | None = None,
                   families: list[str] | None = None, workers: int | None = None) -> list[dict[str, Any]]:
    """Generate the data, train and score each family's small model; returns the table rows. Each family's run
    goes to ``output/<family>``, replacing the run an earlier demo left there (``overwrite``)."""
    from locvit.dense.config import DetectConfig, SegmentConfig, build_task_config

    if task not in ("detect", "segment"):
        raise ValueError(f"task must be 'detect' or 'segment', got {task!r}")
    out = Path(output)
    data = out / "data"
    if not (data / ("train" if task == "detect" else "images")).is_dir():
        (make_detection_data if task == "detect" else make_segmentation_data)(data, **DATA)
        print(f"wrote the generated {task} dataset to {data} ({DATA['num_train']} training / {DATA['num_val']} "
              "validation images)", flush=True)
    rows = []
    for fam, spec in DENSE_DEMO_MODELS.items():
        if families and fam.lower() not in [f.lower() for f in families]:
            continue
        recipe = dict(DETECT if task == "detect" else SEGMENT, model=spec["model"], model_kwargs=spec["model_kwargs"],
                      data=str(data), output=str(out / fam.lower()), overwrite=True)  # a rerun replaces its runs
        if epochs:
            recipe.update(epochs=epochs, eval_interval=epochs, lr_steps=[s for s in recipe.get("lr_steps", [])
                                                                         if s <= epochs])
        if workers is not None:
            recipe["workers"] = workers
        print(f"\n== {fam}: {spec['model']} (small) -- {'Mask R-CNN' if task == 'detect' else 'Semantic FPN'}",
              flush=True)
        t0, c0 = time.time(), _cpu_seconds()
        if task == "detect":
            from locvit.dense.detect import train_run

            m = train_run(build_task_config(DetectConfig, None, recipe))
        else:
            from locvit.dense.segment import train_run

            m = train_run(build_task_config(SegmentConfig, None, recipe))
        rows.append(dict(family=fam, model=spec["model"], train_s=time.time() - t0, cpu_s=_cpu_seconds() - c0,
                         **{k: v for k, v in m.items() if isinstance(v, (int, float))}))
    table = format_table(task, rows)
    print("\n" + table)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.md", table + "\n")
    atomic_write_text(out / "results.json", json.dumps(rows, indent=1))
    print(f"\ntable: {out / 'results.md'}")
    return rows


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the DataLoader workers of past epochs): unlike the
    wall time, it does not grow when other programs share the cores."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def format_table(task: str, rows: list[dict[str, Any]]) -> str:
    if task == "detect":
        cols = [("bbox AP", "bbox_AP"), ("bbox AP50", "bbox_AP50"), ("mask AP", "segm_AP"),
                ("mask AP50", "segm_AP50")]
        fmt = "{:.3f}"
    else:
        cols = [("mIoU (%)", "mIoU"), ("mAcc (%)", "mAcc"), ("aAcc (%)", "aAcc")]
        fmt = "{:.1f}"
    head = "| family | model (small config) | " + " | ".join(c for c, _ in cols) + " | wall time (s) | CPU time (s) |"
    lines = [head, "|" + "---|" * (len(cols) + 4)]
    for r in rows:
        lines.append(f"| {r['family']} | {r['model']} | " + " | ".join(fmt.format(r.get(k, float('nan')))
                                                                      for _, k in cols)
                     + f" | {r['train_s']:.0f} | {r.get('cpu_s', float('nan')):.0f} |")
    return "\n".join(lines)

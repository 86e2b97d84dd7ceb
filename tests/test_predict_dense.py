"""``locvit detect predict`` / ``locvit segment predict`` and ``detect eval``'s results file: the boxes are drawn
where the model predicts them, the COCO results JSON re-scores with plain pycocotools to the eval's AP, segm
scoring buckets by mask area, and bad input gets one clear message each (tiny runs on generated shapes)."""
import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from locvit.cli import main
from locvit.data.synthetic import make_detection_data, make_segmentation_data
from locvit.dense.coco import CocoDetection
from locvit.dense.metrics import COCO_STATS, coco_evaluate

VVT = ["embed_dims=[8,16,16,32]", "num_heads=[1,2,2,4]", "depths=[1,1,1,1]", "mlp_ratios=[2,2,2,2]"]
DET = ["--min-size", "96", "--max-size", "128", "--fpn-channels", "16", "--box-head-dim", "32",
       "--mask-head-channels", "16", "--detector-kwargs", "rpn_pre_nms_top_n_test=100", "rpn_post_nms_top_n_test=50",
       "box_detections_per_img=20"]


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def ok(*args):
    rc, out, err = run(*args)
    assert rc == 0, f"locvit {' '.join(map(str, args))} failed:\n{out[-2000:]}\n{err[-2000:]}"
    return out


@pytest.fixture(scope="module")
def det_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    data = make_detection_data(root / "data", num_train=8, num_val=4, size=64, seed=1)
    ok("detect", "train", "--model", "vvt_tiny", "--model-kwargs", *VVT, "--data", data, "--batch-size", "2",
       "--workers", "0", "--warmup-iters", "1", "--lr", "1e-3", "--iters", "4", "--no-tensorboard", *DET,
       "--output", root / "run")
    return data, root / "run"


def test_segm_results_are_bucketed_by_mask_area(tmp_path):
    """With 'bbox' left in, loadRes would take a detection's area from its box; the scores must not depend on it."""
    from pycocotools import mask as mask_utils

    data = make_detection_data(tmp_path, num_train=1, num_val=4, size=96, seed=3)
    ds = CocoDetection(data / "val" / "annotations.json", data / "val" / "images", masks=True)
    results = []
    for img_id in ds.ids:
        info = ds.images[img_id]
        for a in ds.anns[img_id]:
            rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], info["height"], info["width"]))
            results.append(dict(image_id=img_id, category_id=a["category_id"], score=1.0,
                                segmentation=dict(size=rle["size"], counts=rle["counts"].decode())))
        # a small false positive, most confident: it counts against APs only when its area is its mask's
        fp = np.zeros((info["height"], info["width"]), np.uint8)
        fp[:6, :6] = 1
        rle = mask_utils.encode(np.asfortranarray(fp))
        results.append(dict(image_id=img_id, category_id=ds.cat_ids[0], score=2.0,
                            segmentation=dict(size=rle["size"], counts=rle["counts"].decode())))
    plain = coco_evaluate(ds.coco(), copy.deepcopy(results), "segm", verbose=False)
    whole = [dict(r, bbox=[0.0, 0.0, float(ds.images[r["image_id"]]["width"]),
                           float(ds.images[r["image_id"]]["height"])]) for r in results]  # boxes of another area
    assert coco_evaluate(ds.coco(), whole, "segm", verbose=False) == plain
    assert 0.5 < plain["segm_AP"] < 1 and plain["segm_APs"] < 1


def test_detect_eval_results_json_rescores_to_the_same_ap(det_run, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data, run_dir = det_run
    saved = tmp_path / "mine.json"
    out = ok("detect", "eval", "--checkpoint", run_dir, "--workers", "0", "--save-results", saved)
    results = json.loads((run_dir / "results.json").read_text())
    assert json.loads(saved.read_text()) == results and results
    gt_file = data / "val" / "annotations.json"
    gt = json.loads(gt_file.read_text())
    assert {r["image_id"] for r in results} <= {im["id"] for im in gt["images"]}
    assert {r["category_id"] for r in results} <= {c["id"] for c in gt["categories"]}
    printed = [float(line.rsplit("=", 1)[1]) for line in out.splitlines() if "Average Precision  (AP) @[ IoU=0.50:0.95 "
               "| area=   all" in line]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_file))
        stats = {}
        for iou_type in ("bbox", "segm"):
            ev = COCOeval(coco, coco.loadRes(str(saved)), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            stats[iou_type] = ev.stats
    assert printed == pytest.approx([stats["bbox"][0], stats["segm"][0]], abs=5e-4)
    assert printed[0] > 0  # a trained-a-little detector finds something: the comparison is not 0 == 0
    assert len(COCO_STATS) == len(stats["bbox"])


def test_detect_predict_draws_the_boxes_where_the_model_predicts_them(det_run, tmp_path):
    from locvit.dense.common import eval_config
    from locvit.dense.config import DetectConfig
    from locvit.predict.dense import DetectPredictor, draw_detections

    data, run_dir = det_run
    image = sorted((data / "val" / "images").iterdir())[0]
    cfg, weights = eval_config(DetectConfig, None, dict(checkpoint=str(run_dir), workers=0))
    every = DetectPredictor(cfg, weights, score_thr=0.0, device="cpu")([str(image)])[0]
    assert every.scores == sorted(every.scores, reverse=True) and len(every.scores) > 1
    det = DetectPredictor(cfg, weights, score_thr=every.scores[0], device="cpu")([str(image)])[0]
    assert len(det.labels) >= 1 and det.names[0] in ("rectangle", "disc", "triangle")
    with Image.open(image) as im:
        im = im.convert("RGB")
    colors = [(255, 0, 0)] * 10  # one colour no generated image holds
    drawn = np.asarray(draw_detections(im, det, colors, min_side=0))  # at the image's own size
    x0, y0, x1, y1 = (round(v) for v in det.boxes[0].tolist())
    top = drawn[y0, x0 + 1:x1 - 1]
    left = drawn[y0 + 1:y1 - 1, x0]
    assert (top == (255, 0, 0)).all() and (left == (255, 0, 0)).all()
    inside = drawn[(y0 + y1) // 2, x0 + 3:x1 - 3] if det.masks is None else None
    if inside is not None:
        assert not (inside == (255, 0, 0)).all(axis=1).any()
    outside = np.ones(drawn.shape[:2], bool)
    for bx0, by0, bx1, by1 in det.boxes.round().int().tolist():
        outside[max(0, by0 - 2):by1 + 3, max(0, bx0 - 2):bx1 + 3] = False
        outside[max(0, by0 - 2):by0 + 16, max(0, bx0 - 2):] = False  # the name and score, written from the corner
    assert outside.sum() > drawn.shape[0] * drawn.shape[1] / 4
    assert (drawn[outside] == np.asarray(im)[outside]).all()  # nothing drawn away from the boxes

    # the command writes the same detections and one picture per image
    out_dir = tmp_path / "out"
    ok("detect", "predict", "--checkpoint", run_dir, "--workers", "0", "--score-thr", "0.0", "--output", out_dir,
       data / "val" / "images")
    rows = [json.loads(line) for line in (out_dir / "detections.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["source"] == str(image)
    assert rows[0]["boxes"][0] == pytest.approx(every.boxes[0].tolist(), abs=0.01)
    assert "masks" in rows[0] and len(rows[0]["masks"]) == len(rows[0]["boxes"])
    assert len(list((out_dir / "images").iterdir())) == 4


def test_detect_predict_bad_input(det_run, tmp_path):
    data, run_dir = det_run
    base = ["detect", "predict", "--checkpoint", run_dir, "--workers", "0"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("no image")
    out_dir = tmp_path / "out"
    cases = [([*base, "--score-thr", "1.5", "--output", out_dir, data / "val" / "images"], "--score-thr 1.5"),
             ([*base, "--score-thr", "-0.1", "--output", out_dir, data / "val" / "images"], "between 0 and 1"),
             ([*base, data / "val" / "images"], "pass --output DIR"),
             ([*base, "--output", out_dir, tmp_path / "empty"], "holds no image files"),
             ([*base, "--output", out_dir, tmp_path / "notes.txt"], "none of the 1 inputs could be read"),
             (["detect", "eval", "--checkpoint", run_dir, tmp_path / "notes.txt"], "INPUT files are for")]
    for args, message in cases:
        rc, _, err = run(*args)
        assert rc == 2 and "error: " in err and message in err, (args, err)
    assert not out_dir.exists()


def test_segment_predict_writes_label_colour_and_overlay(tmp_path):
    from locvit.dense.common import eval_config
    from locvit.dense.config import SegmentConfig
    from locvit.predict.dense import SegmentPredictor

    data = make_segmentation_data(tmp_path / "data", num_train=4, num_val=2, size=64, seed=1)
    run_dir = tmp_path / "run"
    ok("segment", "train", "--model", "vvt_tiny", "--model-kwargs", *VVT, "--data", data, "--head", "fpn",
       "--decoder-channels", "16", "--num-classes", "3", "--batch-size", "2", "--workers", "0", "--crop-size", "64",
       "64", "--scale", "96", "64", "--test-scale", "96", "64", "--warmup-iters", "1", "--iters", "2",
       "--no-tensorboard", "--output", run_dir)
    images = sorted((data / "images" / "validation").iterdir())
    (tmp_path / "bad.png").write_bytes(b"not a png")
    out_dir = tmp_path / "out"
    rc, _, err = run("segment", "predict", "--checkpoint", run_dir, "--output", out_dir, *images, tmp_path / "bad.png")
    assert rc == 0 and f"skipped {tmp_path / 'bad.png'}" in err
    cfg, weights = eval_config(SegmentConfig, None, dict(checkpoint=str(run_dir)))
    seg = SegmentPredictor(cfg, weights, device="cpu")([str(images[0])])[0]
    label = np.asarray(Image.open(out_dir / "label" / f"0000_{images[0].stem}.png"))
    with Image.open(images[0]) as im:
        assert label.shape == (im.height, im.width)
    assert (label == seg.labels.numpy()).all() and label.max() < 3
    color = Image.open(out_dir / "color" / f"0000_{images[0].stem}.png")
    assert color.width > label.shape[1]  # the legend on the right
    assert Image.open(out_dir / "overlay" / f"0000_{images[0].stem}.png").size == (label.shape[1], label.shape[0])
    assert (out_dir / "unreadable.txt").read_text().startswith(str(tmp_path / "bad.png"))
    assert torch.equal(torch.from_numpy(label.astype(np.int64)), seg.labels)

"""locvit detect / segment: COCOeval and mIoU against known answers, the data checks, a few training steps of every
detector and head, the run directory (resume bit for bit, eval of a run), and the demo (heavy).

Tiny widths and 64-128 px generated images keep it fast; the commands run as users run them (DataLoader workers,
flips, crops and photometric distortion on)."""
import contextlib
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from locvit.data.coco import CocoDetection, find_coco_split, flip_permutation
from locvit.data.segmentation import SegmentationFolder, find_segmentation_split, reduce_zero_label, rescale_size
from locvit.data.synthetic import make_detection_data, make_segmentation_data
from locvit.engine.distributed import DistInfo
from locvit.tasks.config import DetectConfig, SegmentConfig, build_task_config
from locvit.tasks.metrics import coco_evaluate, confusion_matrix, segmentation_scores

VVT = dict(embed_dims=[8, 16, 16, 32], num_heads=[1, 2, 2, 4], depths=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2])
DET_SMALL = dict(min_size=[96], max_size=128, fpn_channels=16, box_head_dim=32, mask_head_channels=[16],
                 keypoint_head_channels=[16, 16],
                 detector_kwargs=dict(rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
                                      rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
                                      box_batch_size_per_image=32, box_detections_per_img=20))


def locvit(*args, check=True):
    """``locvit ARGS`` in this process (the command-line entry point, without a new interpreter's start-up)."""
    from locvit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    proc = subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())
    if check and rc != 0:
        raise AssertionError(f"locvit {' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def kv(d):
    return [f"{k}={json.dumps(v)}" for k, v in d.items()]


@pytest.fixture(scope="module")
def det_data(tmp_path_factory):
    return make_detection_data(tmp_path_factory.mktemp("coco"), num_train=8, num_val=4, size=64, seed=1)


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    return make_segmentation_data(tmp_path_factory.mktemp("ade"), num_train=8, num_val=3, size=64, seed=1)


# --- metrics against known answers --------------------------------------------------------------------------------
def _gt_results(ds: CocoDetection, shift: float = 0.0):
    """The ground truth as detections (score 1), boxes and keypoints optionally shifted right by ``shift`` px."""
    from pycocotools import mask as mask_utils

    out = []
    for img_id in ds.ids:
        info = ds.images[img_id]
        for a in ds.anns[img_id]:
            x, y, w, h = a["bbox"]
            rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], info["height"], info["width"]))
            if shift:
                m = np.roll(mask_utils.decode(rle), int(shift), axis=1)
                rle = mask_utils.encode(np.asfortranarray(m))
            k = np.asarray(a["keypoints"], dtype=float).reshape(-1, 3)
            k[:, 0] += shift
            out.append(dict(image_id=img_id, category_id=a["category_id"], score=1.0, bbox=[x + shift, y, w, h],
                            segmentation=dict(size=rle["size"], counts=rle["counts"].decode()),
                            keypoints=k.flatten().tolist()))
    return out


def test_coco_eval_perfect_and_perturbed(det_data):
    """COCOeval through locvit: the ground truth as predictions scores AP 1.0 for boxes, masks and keypoints;
    the same predictions shifted by 3 px score less on all three."""
    ds = CocoDetection(det_data / "val" / "annotations.json", det_data / "val" / "images", keypoints=True)
    gt = ds.coco()
    perfect, shifted = _gt_results(ds), _gt_results(ds, shift=3.0)
    for iou_type in ("bbox", "segm", "keypoints"):
        p = coco_evaluate(gt, perfect, iou_type, verbose=False)
        s = coco_evaluate(gt, shifted, iou_type, verbose=False)
        assert p[f"{iou_type}_AP"] == pytest.approx(1.0), (iou_type, p)
        assert p[f"{iou_type}_AP50"] == pytest.approx(1.0)
        assert s[f"{iou_type}_AP"] < 0.9, (iou_type, s)
        assert len(p) == (10 if iou_type == "keypoints" else 12)
    assert coco_evaluate(gt, [], "bbox", verbose=False)["bbox_AP"] == 0.0


def test_miou_matches_hand_computed():
    """mmsegmentation's IoUMetric on a 3-class case worked by hand, with ignored pixels and a class never labelled."""
    label = torch.tensor([[0, 0, 1, 1], [0, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 1, 2, 0]])
    conf = confusion_matrix(pred, label, 3)
    # rows = truth: class 0 -> pred 0,1,0 ; class 1 -> pred 1,1,0 ; class 2 -> pred 1 ; the 255 pixel is skipped
    assert conf.tolist() == [[2, 1, 0], [1, 2, 0], [0, 1, 0]]
    s = segmentation_scores(conf)
    iou = [2 / (3 + 3 - 2), 2 / (3 + 4 - 2), 0 / (1 + 0 - 0)]
    acc = [2 / 3, 2 / 3, 0.0]
    assert s["mIoU"] == pytest.approx(100 * sum(iou) / 3)
    assert s["mAcc"] == pytest.approx(100 * sum(acc) / 3)
    assert s["aAcc"] == pytest.approx(100 * 4 / 7)
    # a class neither labelled nor predicted has no IoU (left out of the mean), one only predicted has IoU 0
    s4 = segmentation_scores(confusion_matrix(pred, label, 4))
    assert s4["mIoU"] == pytest.approx(s["mIoU"]) and np.isnan(s4["IoU"]["3"])
    only_pred = confusion_matrix(torch.tensor([3, 0]), torch.tensor([0, 0]), 4)
    assert segmentation_scores(only_pred)["mIoU"] == pytest.approx(100 * (0.5 + 0.0) / 2)


def test_label_conventions_and_rescale():
    y = torch.tensor([0, 1, 2, 150, 255])
    assert reduce_zero_label(y).tolist() == [255, 0, 1, 149, 255]
    assert rescale_size((480, 640), (2048, 512)) == (512, 683)  # the short side bound wins
    assert rescale_size((100, 3000), (2048, 512)) == (68, 2048)  # the long side bound wins
    assert flip_permutation(["nose", "left_eye", "right_eye", "top_left", "top_right"]) == [0, 2, 1, 4, 3]


# --- data checks ----------------------------------------------------------------------------------------------------
def _coco_copy(src: Path, dst: Path, edit) -> Path:
    import shutil

    shutil.copytree(src, dst)
    ann = dst / "val" / "annotations.json"
    data = json.loads(ann.read_text())
    edit(data)
    ann.write_text(json.dumps(data))
    return ann


def test_coco_bad_inputs(det_data, tmp_path):
    images = det_data / "val" / "images"
    with pytest.raises(FileNotFoundError, match="annotation file .*nope.json does not exist"):
        CocoDetection(tmp_path / "nope.json", images)
    ann = _coco_copy(det_data, tmp_path / "a", lambda d: d["images"].append(dict(id=99, file_name="gone.png",
                                                                                 height=9, width=9)))
    with pytest.raises(FileNotFoundError, match="lists 1 images that are not in .*gone.png"):
        CocoDetection(ann, ann.parent / "images")
    ann = _coco_copy(det_data, tmp_path / "b", lambda d: d["annotations"][0].update(category_id=7))
    with pytest.raises(ValueError, match=r"annotation 1 \(image 00000.png\) has category_id 7, which is not in"):
        CocoDetection(ann, ann.parent / "images")
    ann = _coco_copy(det_data, tmp_path / "c", lambda d: d["annotations"][0].update(bbox=[10, 10, -5, 4]))
    with pytest.raises(ValueError, match="negative width or height"):
        CocoDetection(ann, ann.parent / "images")
    ann = _coco_copy(det_data, tmp_path / "d", lambda d: d.update(images=[], annotations=[]))
    with pytest.raises(ValueError, match="lists no images: the split is empty"):
        CocoDetection(ann, ann.parent / "images")
    # zero-size boxes (COCO has a few) are dropped and counted, not fatal
    ann = _coco_copy(det_data, tmp_path / "e", lambda d: d["annotations"][0].update(bbox=[10, 10, 0, 4]))
    ds = CocoDetection(ann, ann.parent / "images", train=True, masks=True)
    assert ds.degenerate == 1 and "1 boxes of zero width or height dropped" in ds.summary()
    with pytest.raises(FileNotFoundError, match="no COCO-format 'train' split"):
        find_coco_split(tmp_path / "a" / "val", "train")


def test_segmentation_bad_inputs(seg_data, tmp_path):
    import shutil

    root = tmp_path / "ade"
    shutil.copytree(seg_data, root)
    images, labels = find_segmentation_split(root, "val")
    Image.new("L", (7, 5)).save(labels / "00000.png")  # a label map of another size than its image
    with pytest.raises(ValueError, match="1 label maps differ in size from their images.*00000.png is 7x5"):
        SegmentationFolder(images, labels, 3)
    (labels / "00000.png").unlink()
    with pytest.raises(FileNotFoundError, match="have no label map"):
        SegmentationFolder(images, labels, 3)
    for p in images.iterdir():
        p.unlink()
    with pytest.raises(ValueError, match="holds no images: the split is empty"):
        SegmentationFolder(images, labels, 3)
    train = SegmentationFolder(*find_segmentation_split(root, "train"), 2)  # labels 0..2 need 3 classes
    with pytest.raises(ValueError, match="holds label 2, outside 0..1"):
        train.check_labels()


def test_cli_bad_data_fails_before_training(det_data, tmp_path):
    """One line, exit 2, nothing written: an image listed but absent."""
    ann = _coco_copy(det_data, tmp_path / "data", lambda d: d["images"][0].update(file_name="missing.png"))
    out = tmp_path / "run"
    proc = locvit("detect", "train", "--data", ann.parents[1], "--model", "vvt_tiny", "--iters", "2",
                  "--output", out, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "missing.png" in proc.stderr, proc.stderr
    assert not out.exists()


# --- a few training steps of each detector and head ---------------------------------------------------------------
@pytest.mark.parametrize("detector", ["mask_rcnn", "faster_rcnn", "retinanet", "keypoint_rcnn"])
def test_detector_steps_reduce_loss(det_data, detector):
    from locvit.tasks.detect import DetectionTask, build_detector, load_split

    torch.manual_seed(0)
    cfg = build_task_config(DetectConfig, None, dict(DET_SMALL, model="vvt_tiny", model_kwargs=VVT, detector=detector,
                                                     data=str(det_data), iters=5, batch_size=2, workers=0,
                                                     drop_path=0.0))
    train_set = load_split(cfg, "train")
    model = build_detector(cfg, len(train_set.cat_ids) + 1, len(train_set.keypoint_names) or None, verbose=False)
    task = DetectionTask(cfg, model, train_set, train_set, DistInfo())
    batch = next(iter(task.train_loader))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(15):
        torch.manual_seed(0)  # the same anchor/RoI sampling draws each step: only the weights change
        loss, parts, n = task.loss(model, batch)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert n == 2 and all(np.isfinite(losses))
    # two-stage box losses rise at first, as the RPN starts proposing objects: compare the end with the start
    assert np.mean(losses[-3:]) < 0.85 * losses[0], (detector, losses)
    if detector == "keypoint_rcnn":
        assert "loss_keypoint" in parts


@pytest.mark.parametrize("head", ["fpn", "upernet"])
def test_segmenter_steps_reduce_loss(seg_data, head):
    from locvit.tasks.segment import SegmentationTask, build_segmenter, load_split

    torch.manual_seed(0)
    cfg = build_task_config(SegmentConfig, None, dict(model="vvt_tiny", model_kwargs=VVT, head=head, num_classes=3,
                                                      data=str(seg_data), iters=5, batch_size=2, workers=0,
                                                      crop_size=[64, 64], scale=[96, 64], decoder_channels=32,
                                                      aux_weight=0.4 if head == "upernet" else 0.0, drop_path=0.0))
    train_set = load_split(cfg, "train", 3, (0.5,) * 3, (0.25,) * 3)
    model = build_segmenter(cfg, 3, verbose=False)
    task = SegmentationTask(cfg, model, train_set, train_set, 3, DistInfo())
    batch = next(iter(task.train_loader))
    assert batch[0].shape == (2, 3, 64, 64) and batch[1].shape == (2, 64, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(6):
        loss, parts, _ = task.loss(model, batch)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.9 * losses[0], (head, losses)
    assert ("loss_aux" in parts) == (head == "upernet")
    model.eval()
    with torch.no_grad():  # any input size; sliding windows cover the image
        from locvit.tasks.segment import predict

        x = torch.randn(1, 3, 70, 150)
        whole = predict(model, x, cfg, (35, 75))
        slide = predict(model, x, build_task_config(SegmentConfig, None, dict(
            cfg.to_dict(), inference="slide", crop_size=[64, 64], slide_stride=[43, 43])), (35, 75))
    assert whole.shape == slide.shape == (1, 3, 35, 75) and torch.isfinite(slide).all()


# --- the run directory ---------------------------------------------------------------------------------------------
def _resume_bit_exact(tmp_path, cmd, n_iters):
    full, cut = tmp_path / "full", tmp_path / "cut"
    locvit(*cmd, "--iters", n_iters, "--output", full)
    locvit(*cmd, "--iters", n_iters, "--max-steps", n_iters // 2, "--output", cut)
    out = locvit(*cmd, "--iters", n_iters, "--output", cut, "--resume")
    assert "resumed from" in out.stdout
    a, b = load_file(str(full / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"resumed weights differ from the uninterrupted run in {diff[:5]}"
    assert not any(p.name.endswith(".tmp") for p in cut.iterdir())
    return full



def test_train_refuses_a_run_folder_before_reading_data(seg_data, tmp_path):
    """`locvit detect|segment train` share `locvit train`'s run-directory check (locvit.engine.rundir.start_run):
    a folder holding a run is refused unless --resume or --overwrite, another command's run is named with the
    command that continues it -- all before the data (here: none) are read. --overwrite replaces the run: only the
    new run's files remain."""
    import yaml

    from locvit.engine.config import build_config

    def fake_run(folder, config, **state):
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump(dict(config, output=str(folder))))
        torch.save(dict(state, config=dict(config, output=str(folder))), folder / "last.pth")
        return folder

    seg = fake_run(tmp_path / "seg", SegmentConfig(epochs=4).to_dict(), global_step=30,
                   history=[dict(iter=30, epoch=2.0)])
    det = fake_run(tmp_path / "det", DetectConfig(iters=50).to_dict(), global_step=50, history=[dict(iter=50)])
    cls = fake_run(tmp_path / "cls", build_config(None, dict(data="digits", epochs=3, warmup_epochs=0)).to_dict(),
                   epoch=0, epoch_totals=[None])
    missing = tmp_path / "no-data"
    cases = [
        (["segment", "train", "--output", seg, "--iters", "9"],
         f"{seg} already holds a `locvit segment train` run (partial: last.pth at iteration 30 of a 4-epoch "
         "schedule); pass --resume to continue it or --overwrite to start again in it, or choose another --output"),
        (["detect", "train", "--output", det, "--iters", "9"],
         "already holds a `locvit detect train` run (finished, 50 iterations); pass --overwrite to start again"),
        (["detect", "train", "--resume", seg],
         f"{seg} holds a `locvit segment train` run (partial: last.pth at iteration 30 of a 4-epoch schedule), not "
         f"a `locvit detect train` run: continue it with `locvit segment train --resume {seg}`"),
        (["segment", "train", "--resume", cls], "not a `locvit segment train` run: continue it with `locvit train "
                                                f"--resume {cls}`"),
        (["segment", "train", "--output", cls, "--iters", "9"],
         f"{cls} holds a `locvit train` run (partial: last.pth after epoch 1 of 3), not a `locvit segment train` "
         "run; choose another --output, or pass --overwrite"),
    ]
    for args, msg in cases:
        proc = locvit(*args, "--data", missing, check=False)
        assert proc.returncode == 2 and f"locvit {args[0]}: error: " in proc.stderr and msg in proc.stderr, \
            (args, proc.stderr)
    # with the flag, the check passes and the data are the next thing read
    proc = locvit("segment", "train", "--output", seg, "--iters", "9", "--overwrite", "--data", missing, check=False)
    assert proc.returncode == 2 and str(missing) in proc.stderr and "already holds" not in proc.stderr
    assert sorted(p.name for p in seg.iterdir()) == ["config.yaml", "last.pth"]  # nothing moved before the data
    locvit("segment", "train", "--output", seg, "--overwrite", "--data", seg_data, "--iters", "2", "--model",
           "vvt_tiny", "--model-kwargs", *kv(VVT), "--num-classes", "3", "--batch-size", "2", "--crop-size", "64",
           "64", "--scale", "96", "64", "--test-scale", "96", "64", "--decoder-channels", "32", "--no-tensorboard",
           "--warmup-iters", "0", "--workers", "0")
    assert sorted(p.name for p in seg.iterdir()) == ["best.safetensors", "config.yaml", "curves.png", "last.pth",
                                                     "metrics.csv", "model.safetensors"]
    assert torch.load(seg / "last.pth", weights_only=True)["global_step"] == 2
    assert "iters: 2" in (seg / "config.yaml").read_text()

def test_detect_train_resume_and_eval(det_data, tmp_path):
    """`locvit detect train` with the default DataLoader workers and flips: the run directory as `locvit train`
    writes it; stopping halfway and resuming gives the uninterrupted run's weights bit for bit; `detect eval` of
    the run reproduces its scores."""
    cmd = ["detect", "train", "--model", "vvt_tiny", "--model-kwargs", *kv(VVT), "--data", det_data,
           "--batch-size", "2", "--workers", "2", "--warmup-iters", "2", "--lr", "1e-3", "--lr-steps", "5",
           "--no-tensorboard", "--drop-path", "0.1", "--eval-interval", "3", *_det_flags()]
    run = _resume_bit_exact(tmp_path, cmd, 6)
    cfg = (run / "config.yaml").read_text()
    assert "detector: mask_rcnn" in cfg and "iters: 6" in cfg
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 3 and {"iter", "train_loss", "bbox_AP", "segm_AP", "loss_mask", "skipped"} <= set(header)
    assert (run / "curves.png").stat().st_size > 1000 and (run / "best.safetensors").is_file()
    best = max(float(dict(zip(header, r.split(",")))["bbox_AP"]) for r in rows[1:])
    out = locvit("detect", "eval", "--checkpoint", run, "--workers", "0")  # scores the run's best.safetensors
    assert _first_ap(out.stdout) == pytest.approx(best, abs=1e-3), out.stdout[-1500:]


def _det_flags():
    out = []
    for k, v in DET_SMALL.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, dict):
            out += [flag, *kv(v)]
        elif isinstance(v, list):
            out += [flag, *map(str, v)]
        else:
            out += [flag, str(v)]
    return out


def _first_ap(text: str) -> float:
    line = next(ln for ln in text.splitlines() if "Average Precision" in ln and "0.50:0.95" in ln and "all" in ln)
    return float(line.rsplit("=", 1)[1])


def test_segment_train_resume_and_eval(seg_data, tmp_path):
    """`locvit segment train` (UperNet with its auxiliary head, crops, flips, photometric distortion, workers):
    resumed = uninterrupted bit for bit; `segment eval` with sliding windows runs on the run directory."""
    cmd = ["segment", "train", "--model", "vvt_tiny", "--model-kwargs", *kv(VVT), "--data", seg_data,
           "--head", "upernet", "--aux-weight", "0.4", "--decoder-channels", "32", "--num-classes", "3",
           "--batch-size", "2", "--workers", "2", "--crop-size", "64", "64", "--scale", "96", "64",
           "--test-scale", "96", "64", "--warmup-iters", "2", "--sched", "poly", "--lr", "1e-3", "--no-tensorboard"]
    run = _resume_bit_exact(tmp_path, cmd, 6)
    header, row = ((run / "metrics.csv").read_text().splitlines()[i].split(",") for i in (0, -1))
    last = dict(zip(header, row))
    assert {"mIoU", "mAcc", "aAcc", "loss_seg", "loss_aux"} <= set(last)
    best = max(float(dict(zip(header, r.split(",")))["mIoU"])
               for r in (run / "metrics.csv").read_text().splitlines()[1:])
    out = locvit("segment", "eval", "--checkpoint", run, "--workers", "0")
    assert f"mIoU {best:.2f}" in out.stdout
    out = locvit("segment", "eval", "--checkpoint", run, "--workers", "0", "--inference", "slide",
                 "--slide-stride", "32", "32")
    assert "slide inference" in out.stdout


def test_shipped_recipes_resolve():
    from locvit.tasks.config import DENSE_CONFIG_DIR

    det = sorted(p.stem for p in DENSE_CONFIG_DIR.glob("*_coco.yaml"))
    seg = sorted(p.stem for p in DENSE_CONFIG_DIR.glob("*_ade20k.yaml"))
    assert {"mask_rcnn_1x_coco", "mask_rcnn_3x_coco", "retinanet_1x_coco", "regionvit_mask_rcnn_1x_coco",
            "keypoint_rcnn_1x_coco"} <= set(det)
    assert {"upernet_160k_ade20k", "semantic_fpn_80k_ade20k"} <= set(seg)
    for name in det:
        cfg = build_task_config(DetectConfig, name, {"model": "focal_tiny"})
        assert cfg.lr == 1e-4 and cfg.weight_decay == 0.05 and cfg.batch_size * 8 == 16
    rv = build_task_config(DetectConfig, "regionvit_mask_rcnn_1x_coco")
    assert (rv.iters, rv.lr_steps, rv.min_size, rv.max_size) == (90000, [60000, 80000], [672], 1120)
    up = build_task_config(SegmentConfig, "upernet_160k_ade20k")
    assert (up.iters, up.lr, up.weight_decay, up.sched, up.aux_weight, up.decoder_channels) == (
        160000, 6e-5, 0.01, "poly", 0.4, 512)


# --- the demo ------------------------------------------------------------------------------------------------------
@pytest.mark.heavy
@pytest.mark.parametrize("task", ["detect", "segment"])
def test_dense_demo_beats_chance(tmp_path, task):
    """`locvit demo --task detect|segment` as shipped: every family clearly above chance (detection: AP 0;
    segmentation: background everywhere scores mIoU 28.6 on the generated validation split)."""
    from locvit.tasks.demo import run_dense_demo

    rows = run_dense_demo(task, tmp_path)
    assert len(rows) == 4
    for r in rows:
        if task == "detect":
            assert r["bbox_AP50"] > 0.5 and r["segm_AP50"] > 0.5, r
        else:
            assert r["mIoU"] > 45 and r["aAcc"] > 90, r


def test_unreadable_images_skipped_and_nan_stop(seg_data, tmp_path):
    """A corrupt validation image is skipped and counted; a non-finite loss stops the run and keeps the last good
    checkpoint (finite weights)."""
    import re
    import shutil

    root = tmp_path / "ade"
    shutil.copytree(seg_data, root)
    (root / "images" / "validation" / "00001.png").write_bytes(b"\x89PNG not really")
    common = ["segment", "train", "--model", "vvt_tiny", "--model-kwargs", *kv(VVT), "--data", root,
              "--num-classes", "3", "--batch-size", "2", "--crop-size", "64", "64", "--scale", "96", "64",
              "--test-scale", "96", "64", "--decoder-channels", "32", "--no-tensorboard", "--warmup-iters", "0",
              "--workers", "2"]
    out = locvit(*common, "--iters", "2", "--output", tmp_path / "ok")
    assert "1 unreadable images skipped" in out.stdout + out.stderr
    rows = (tmp_path / "ok" / "metrics.csv").read_text().splitlines()
    assert int(dict(zip(rows[0].split(","), rows[1].split(",")))["skipped"]) == 1
    proc = locvit(*common, "--iters", "8", "--lr", "1e30", "--checkpoint-interval", "1", "--output", tmp_path / "nan",
                  check=False)
    assert proc.returncode != 0 and re.search("non-finite loss .* at iteration 2", proc.stderr), proc.stderr
    state = torch.load(tmp_path / "nan" / "last.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.heavy  # two interpreters starting on two cores: about a minute
def test_detect_ddp_runs(det_data, tmp_path):
    """torchrun with two CPU processes: detections of both ranks gathered, one COCOeval table, one run directory."""
    import os
    import sys

    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29563", "-m", "locvit",
           "detect", "train", "--model", "vvt_tiny", "--model-kwargs", *kv(VVT), "--data", str(det_data),
           "--batch-size", "1", "--workers", "1", "--iters", "2", "--warmup-iters", "0", "--no-tensorboard",
           "--output", str(run), *_det_flags()]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("COCOeval bbox") == 1  # rank 0 prints
    assert torch.load(run / "last.pth", weights_only=True)["global_step"] == 2
    assert (run / "model.safetensors").is_file()


def test_schedules():
    """Detectron2's step schedule (the update after milestone s runs at lr x gamma) and mmsegmentation's poly, each
    after a linear warm-up from lr x warmup_ratio."""
    from locvit.engine.loop import build_scheduler

    def lrs(cfg, total, unit=1, at=()):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        sched = build_scheduler(cfg, opt, total, unit)
        out = {}
        for t in at:
            sched.step_update(num_updates=t)
            out[t] = opt.param_groups[0]["lr"]
        return out

    step = build_task_config(DetectConfig, None, dict(iters=100, lr=1.0, lr_steps=[60, 80], warmup_iters=10,
                                                      warmup_ratio=0.001))
    got = lrs(step, 100, at=(0, 5, 10, 59, 60, 79, 80, 99))
    assert got[0] == pytest.approx(0.001) and got[5] == pytest.approx(0.001 + 0.5 * 0.999)
    assert got[10] == got[59] == 1.0 and got[60] == got[79] == pytest.approx(0.1) and got[80] == pytest.approx(0.01)
    ep = build_task_config(DetectConfig, None, dict(epochs=12, lr=1.0, lr_steps=[8, 11], warmup_iters=0))
    got = lrs(ep, 12 * 10, unit=10, at=(79, 80, 110))
    assert got[79] == 1.0 and got[80] == pytest.approx(0.1) and got[110] == pytest.approx(0.01)
    poly = build_task_config(SegmentConfig, None, dict(iters=100, lr=1.0, sched="poly", poly_power=1.0,
                                                       warmup_iters=0))
    got = lrs(poly, 100, at=(0, 50, 100))
    assert got[0] == 1.0 and got[50] == pytest.approx(0.5) and got[100] == pytest.approx(0.0)

"""``locvit predict`` and :class:`locvit.Predictor`: the logits ``locvit eval`` computes, the class names that travel
with the weights (train -> safetensors metadata -> convert -> ``local-dir:``; ImageNet's from timm), the files of
``--output``, and one clear message for each kind of bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import locvit
from locvit import cli
from locvit.labels import label_metadata, read_label_names
from locvit.weights.checkpoint import save_checkpoint

KW = dict(depth=1, embed_dim=32, num_heads=2, reduction=4)
CLI_KW = ["--model-kwargs", *(f"{k}={v}" for k, v in KW.items()), "--img-size", "32"]


def tiny(num_classes=3, seed=0):
    torch.manual_seed(seed)
    return locvit.create_model("localvit_tiny", num_classes=num_classes, img_size=32, **KW).eval()


def images(root: Path) -> list[Path]:
    """Class folders 'a', 'b', 'c' of images in the modes a folder of photos holds: RGB of several sizes, grayscale,
    16-bit grayscale, RGBA, palette with transparency, CMYK JPEG."""
    rng = np.random.default_rng(0)
    files = []
    specs = [("a", "RGB", (40, 30)), ("a", "L", (32, 32)), ("b", "I;16", (24, 36)), ("b", "RGBA", (50, 50)),
             ("c", "P", (33, 20)), ("c", "CMYK", (64, 48)), ("a", "RGB", (120, 90))]
    for i, (cls, mode, (w, h)) in enumerate(specs):
        (root / cls).mkdir(parents=True, exist_ok=True)
        rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        if mode == "I;16":
            im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
        elif mode == "P":
            im = rgb.convert("P")
            im.info["transparency"] = 0
        else:
            im = rgb.convert(mode)
        path = root / cls / f"img{i}.{'jpg' if mode == 'CMYK' else 'png'}"
        im.save(path, **({"transparency": 0} if mode == "P" else {}))
        files.append(path)
    return files


def run_cli(*args):
    return cli.main([str(a) for a in args])


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "w.safetensors"
    save_checkpoint(tiny(), path, metadata=label_metadata(["ant", "bee", "cat"]))
    return path


def test_predict_gives_the_logits_eval_computes(tmp_path, weights):
    from timm.data import create_transform, resolve_data_config

    from locvit.engine.evaluate import evaluate_model

    data = tmp_path / "data"
    files = images(data)
    pred = locvit.Predictor("localvit_tiny", weights, img_size=32, model_kwargs=KW, device="cpu", topk=3)
    preds, unreadable = pred.predict_files(files)
    assert not unreadable and [p.source for p in preds] == [str(f) for f in files]
    assert preds[0].names[0] in ("ant", "bee", "cat") and abs(sum(preds[0].scores) - 1) < 1e-5

    # the same numbers as `locvit eval` on the folder: its loss and top-1 come from these logits
    res = evaluate_model("localvit_tiny", str(data), checkpoint=str(weights), img_size=32, batch_size=4, workers=0,
                         device="cpu", model_kwargs=KW)
    targets = torch.tensor([("a", "b", "c").index(f.parent.name) for f in files])
    logits = torch.stack([p.logits for p in preds])
    assert abs(F.cross_entropy(logits.double(), targets).item() - res["loss"]) < 1e-6
    assert abs(100 * (logits.argmax(1) == targets).double().mean().item() - res["top1"]) < 1e-9

    # and exactly what timm's own transform of the model's cfg gives, whatever form the image comes in
    model = tiny()
    transform = create_transform(**resolve_data_config({"input_size": (3, 32, 32)}, model=model))
    with Image.open(files[0]) as im:
        rgb = im.convert("RGB")
    with torch.no_grad():
        ref = model(transform(rgb)[None])[0]
    assert (preds[0].logits - ref).abs().max() < 1e-6
    arr = np.array(rgb)
    for x in (rgb, arr, torch.from_numpy(arr).permute(2, 0, 1), torch.from_numpy(arr).permute(2, 0, 1) / 255.0):
        assert (pred(x)[0].logits - ref).abs().max() < 1e-5
    with pytest.raises(ValueError, match="divide it by 255"):
        pred(torch.from_numpy(arr).permute(2, 0, 1).float())
    with pytest.raises(ValueError, match="H x W or H x W x 1/3/4"):
        pred(np.zeros((4, 5, 6, 7), np.uint8))


def test_cli_writes_predictions_pictures_and_names(tmp_path, weights, capsys):
    files = images(tmp_path / "data")
    out = tmp_path / "out"
    assert run_cli("predict", "--model", "localvit_tiny", *CLI_KW, "--checkpoint", weights, "--topk", "2",
                   "--workers", "0", "--output", out, tmp_path / "data") == 0
    printed = capsys.readouterr().out
    assert all(str(f) in printed for f in files)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == len(files) and all(len(r["names"]) == 2 and set(r["names"]) <= {"ant", "bee", "cat"}
                                           for r in rows)
    pics = sorted((out / "images").iterdir())
    assert len(pics) == len(files)
    sheet = Image.open(out / "contact_sheet.png")
    tile = Image.open(pics[0])
    assert sheet.width > 4 * tile.width and tile.height > tile.width  # a grid of tiles with the top-k under each
    # CSV: one row per image and rank
    assert run_cli("predict", "--model", "localvit_tiny", *CLI_KW, "--checkpoint", weights, "--workers", "0",
                   "--format", "csv", "--no-pictures", "--topk", "3", "--output", tmp_path / "csv", files[0]) == 0
    lines = (tmp_path / "csv" / "predictions.csv").read_text().splitlines()
    assert lines[0] == "source,rank,label,name,score" and len(lines) == 4
    assert not (tmp_path / "csv" / "images").exists()


def test_train_records_names_convert_carries_them_local_dir_predicts_them(tmp_path, capsys):
    from locvit.data.datasets import digits_arrays
    from locvit.hub import convert

    run = tmp_path / "run"
    assert run_cli("train", "--model", "localvit_tiny", *CLI_KW, "--data", "digits", "--epochs", "1",
                   "--max-steps", "2", "--batch-size", "32", "--workers", "0", "--warmup-epochs", "0",
                   "--no-tensorboard", "--no-model-ema", "--output", run) == 0
    digits = [str(i) for i in range(10)]
    assert read_label_names(run / "model.safetensors") == digits
    assert read_label_names(run / "last.pth") == digits

    folder = tmp_path / "hub"
    convert("localvit_tiny", run / "model.safetensors", folder, model_kwargs=dict(KW, num_classes=10, img_size=32))
    assert json.loads((folder / "config.json").read_text())["label_names"] == digits
    imgs, targets, _ = digits_arrays("val")
    Image.fromarray(imgs[0]).save(tmp_path / "digit.png")
    pred = locvit.Predictor(f"local-dir:{folder}", pretrained=True, device="cpu", topk=10)
    assert pred.label_names == digits
    (p,) = pred([str(tmp_path / "digit.png")])
    assert sorted(p.names) == digits and p.names == [digits[i] for i in p.labels]
    # the run directory itself predicts the same
    assert run_cli("predict", run, tmp_path / "digit.png", "--workers", "0", "--topk", "1") == 0
    assert capsys.readouterr().out.strip().endswith(f": {p.names[0]} {100 * p.scores[0]:.1f}%")


def test_imagenet_head_gets_imagenet_names_unnamed_head_gets_indices(tmp_path, capsys):
    from timm.data import ImageNetInfo

    model = tiny(num_classes=1000)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[417] = 10.0  # 'balloon'
    torch.save({"model": model.state_dict()}, tmp_path / "official.pth")  # an authors'-style file: no names
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "x.png")
    assert run_cli("predict", "--model", "localvit_tiny", *CLI_KW, "--checkpoint", tmp_path / "official.pth",
                   "--workers", "0", "--topk", "1", tmp_path / "x.png") == 0
    p = np.exp(10.0) / (np.exp(10.0) + 999)
    assert capsys.readouterr().out.strip().endswith(f": {ImageNetInfo().index_to_description(417)} {100 * p:.1f}%")

    save_checkpoint(tiny(num_classes=20), tmp_path / "unnamed.safetensors")  # ours, without recorded names
    pred = locvit.Predictor("localvit_tiny", tmp_path / "unnamed.safetensors", img_size=32, model_kwargs=KW,
                            device="cpu", topk=2)
    (p,) = pred(str(tmp_path / "x.png"))
    assert p.names == [f"class {i}" for i in p.labels]


def test_bad_inputs_each_get_one_clear_message(tmp_path, weights, capsys, monkeypatch):
    base = ["predict", "--model", "localvit_tiny", *CLI_KW, "--checkpoint", weights, "--workers", "0"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    Image.new("RGB", (40, 40)).save(tmp_path / "good.png")
    Image.new("RGB", (400, 400)).save(tmp_path / "huge.png")
    out = tmp_path / "out"
    cases = [
        ([tmp_path / "empty"], "holds no image files"),
        ([tmp_path / "missing.jpg"], "no such file or folder"),
        ([str(tmp_path / "*.gif")], "no file matches"),
        ([tmp_path / "notes.txt", tmp_path / "broken.png", "--output", out], "none of the 2 inputs could be read"),
        ([tmp_path / "good.png", "--topk", "4"], "--topk 4: the model has 3 classes"),
        ([tmp_path / "good.png", "--topk", "0"], "--topk 0"),
    ]
    for args, message in cases:
        assert run_cli(*base, *args) == 2, args
        err = capsys.readouterr().err
        assert "locvit predict: error: " in err and message in err, (args, err)
    assert not out.exists()  # nothing could be predicted: nothing written

    names = tmp_path / "names.txt"
    names.write_text("one\ntwo\n")
    assert run_cli(*base, "--label-names", names, tmp_path / "good.png") == 2
    assert "gives 2 class names but the model's head has 3 classes" in capsys.readouterr().err
    assert run_cli("predict", "--model", "localvit_tiny", tmp_path / "good.png") == 2
    assert "no weights" in capsys.readouterr().err

    # some files unreadable (not an image, corrupt, a decompression bomb): each named and skipped, the rest predicted
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60_000)  # 400x400 is more than twice that: refused by Pillow
    assert run_cli(*base, tmp_path / "notes.txt", tmp_path / "broken.png", tmp_path / "huge.png",
                   tmp_path / "good.png", "--output", out) == 0
    captured = capsys.readouterr()
    for bad in ("notes.txt", "broken.png", "huge.png"):
        assert f"skipped {tmp_path / bad}: not readable as an image" in captured.err
    assert "DecompressionBombError" in captured.err
    assert str(tmp_path / "good.png") in captured.out
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 1
    assert len((out / "unreadable.txt").read_text().splitlines()) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary folder left


def test_video_predict_gives_the_logits_eval_computes(tmp_path, capsys):
    av = pytest.importorskip("av")
    from locvit.data.video import MotionClips
    from locvit.engine.evaluate import evaluate_model

    vkw = ["embed_dim=[32,64,64,64]", "depth=[1,1,1,1]", "num_heads=[2,2,2,2]", "window_size=4"]
    run = tmp_path / "run"
    assert run_cli("train", "--model", "regionvit_video_tiny", "--task", "video", "--data", "motion",
                   "--num-frames", "4", "--img-size", "32", "--model-kwargs", *vkw, "--max-steps", "1", "--epochs",
                   "1", "--batch-size", "4", "--workers", "0", "--no-tensorboard", "--no-model-ema",
                   "--warmup-epochs", "0", "--output", run) == 0
    assert read_label_names(run / "model.safetensors") == ["left", "right"]
    clips = MotionClips("val", clip_frames=8)
    files = []
    for i in range(4):  # two video files, two frame folders
        folder = tmp_path / "clips" / clips.classes[clips.target(i)]
        folder.mkdir(parents=True, exist_ok=True)
        frames = clips.frames(i)
        if i < 2:
            path = folder / f"clip{i}.mp4"
            with av.open(str(path), "w") as c:
                s = c.add_stream("mpeg4", rate=8)
                s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
                for f in frames:
                    for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                        c.mux(packet)
                for packet in s.encode():
                    c.mux(packet)
        else:
            path = folder / f"clip{i}"
            path.mkdir()
            for t, f in enumerate(frames):
                Image.fromarray(f).save(path / f"{t:03d}.png")
        files.append(path)
    files_in_eval_order = sorted(files, key=lambda p: (p.parent.name, p.name))
    targets = torch.tensor([("left", "right").index(p.parent.name) for p in files_in_eval_order])

    pred = locvit.Predictor(None, run, device="cpu", test_clips=2)
    assert pred.video and pred.label_names == ["left", "right"]
    preds, unreadable = pred.predict_files(files_in_eval_order)
    assert not unreadable and all(p.names[0] in ("left", "right") for p in preds)
    res = evaluate_model("regionvit_video_tiny", str(tmp_path / "clips"), checkpoint=str(run / "model.safetensors"),
                         img_size=32, batch_size=2, workers=0, device="cpu",
                         model_kwargs=dict(embed_dim=[32, 64, 64, 64], depth=[1, 1, 1, 1], num_heads=[2, 2, 2, 2],
                                           window_size=4),
                         video=dict(num_frames=4, sampling="uniform", frame_stride=4, num_clips=2, crops=1))
    logits = torch.stack([p.logits for p in preds])
    assert abs(F.cross_entropy(logits.double(), targets).item() - res["loss"]) < 1e-6

    # the command: a folder of clips, a video that does not decode named and skipped, the middle frames drawn
    (tmp_path / "clips" / "left" / "broken.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "out"
    assert run_cli("predict", run, tmp_path / "clips", "--workers", "0", "--output", out) == 0
    captured = capsys.readouterr()
    assert f"skipped {tmp_path / 'clips' / 'left' / 'broken.mp4'}: not readable as a clip" in captured.err
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4
    assert len(list((out / "images").iterdir())) == 4
    assert run_cli("predict", run, tmp_path / "clips", "--workers", "0", "--output", out, "--explain") == 2
    assert "does not apply to clips" in capsys.readouterr().err

"""Video RegionViT and the clip data: shapes, inflation from image weights (T = 1 is the image model), decoding
real video files with PyAV, frame folders, temporal sampling, clip-consistent augmentation, multi-view testing,
training, and clear errors for bad clips."""
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import locvit
from locvit.data.datasets import Unreadable
from locvit.data.video import (
    MotionClips,
    VideoDecodeError,
    VideoFolderDataset,
    build_video_dataset,
    clip_eval_transform,
    clip_train_transform,
    sample_indices,
)
from locvit.engine.video import MultiViewModel, mix_batch
from locvit.models.regionvit_video import VideoR2LBlock, resample_time

TINY = dict(embed_dim=[32, 64, 64, 64], depth=[1, 1, 1, 1], num_heads=[2, 2, 2, 2], window_size=4)
av = pytest.importorskip("av")


def tiny_video(**kw):
    return locvit.create_model("regionvit_video_tiny", num_classes=5, **TINY, **kw)


def tiny_image(**kw):
    return locvit.create_model("regionvit_tiny", num_classes=5, **TINY, **kw)


def write_video(path, frames: np.ndarray, codec="mpeg4", fps=8):
    """``frames``: T x H x W x 3 uint8 -> a video file written with PyAV."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def gray_frames(n, size=32):
    """Frame i is uniformly gray level 10 * i: the decoded mean tells which frame was sampled."""
    return np.stack([np.full((size, size, 3), 10 * i, np.uint8) for i in range(n)])


# --- the model ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T, H, W", [(1, 32, 32), (3, 40, 28), (8, 32, 48), (5, 17, 23)])
def test_shapes_any_clip_length_and_size(T, H, W):
    model = tiny_video().eval()
    x = torch.randn(2, 3, T, H, W)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[0] == 2 and feats.shape[1] % T == 0 and feats.shape[2] == 64
        assert model.forward_head(feats, pre_logits=True).shape == (2, 64)
        assert model(x).shape == (2, 5)
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, feats)
        for m, info in zip(maps, model.feature_info):
            assert m.shape[:3] == (2, info["num_chs"], T) and m.ndim == 5
        nhwc = model.forward_intermediates(x, indices=[0], output_fmt="NHWC", intermediates_only=True)
        assert nhwc[0].shape[:2] == (2, T) and nhwc[0].shape[-1] == 32
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)


def test_forward_backward_every_parameter_trains_and_checkpointing_agrees():
    torch.manual_seed(0)
    model = tiny_video()
    for blk in model.modules():  # as after some training: the temporal branch is live
        if isinstance(blk, VideoR2LBlock):
            torch.nn.init.normal_(blk.temporal_embed, std=0.5)
            torch.nn.init.normal_(blk.temporal_fc.weight, std=0.1)
    x = torch.randn(2, 3, 4, 32, 32)
    out = model(x)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    again = model(x)
    again.sum().backward()
    torch.testing.assert_close(again, out)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g)


def test_bad_clip_input():
    model = tiny_video().eval()
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 1, 4, 32, 32))
    with pytest.raises(ValueError, match="B x 3 x T x H x W"):
        model(torch.randn(3, 4, 32, 32)[None, None])
    with pytest.raises(ValueError, match="at least one frame"):
        model(torch.randn(1, 3, 0, 32, 32))


def test_t1_equals_image_model_and_frame_average_at_init():
    torch.manual_seed(0)
    image = tiny_image().eval()
    video = tiny_video().eval()
    report = locvit.load_checkpoint(video, image.state_dict())  # inflation: strict, every key accounted for
    assert report.exact
    x = torch.randn(2, 3, 6, 32, 40)
    with torch.no_grad():
        torch.testing.assert_close(video(x[:, :, :1]), image(x[:, :, 0]), rtol=0, atol=0)
        torch.testing.assert_close(video(x[:, :, 0]), image(x[:, :, 0]), rtol=0, atol=0)  # an image = one frame
        frame_avg = torch.stack([image(x[:, :, t]) for t in range(6)]).mean(0)
        torch.testing.assert_close(video(x), frame_avg, rtol=1e-5, atol=1e-6)
    for blk in video.modules():  # TimeSformer's inflation: temporal attention starts as the regional attention
        if isinstance(blk, VideoR2LBlock):
            torch.testing.assert_close(blk.temporal_attn.qkv.weight, blk.attn.qkv.weight, rtol=0, atol=0)
            torch.testing.assert_close(blk.temporal_norm.weight, blk.norm0.weight, rtol=0, atol=0)


def test_inflation_through_create_model_and_load_checkpoint(tmp_path):
    image = tiny_image()
    path = locvit.save_checkpoint(image, tmp_path / "image.safetensors")
    video = timm.create_model("regionvit_video_tiny", pretrained=True, num_classes=5, **TINY,
                              pretrained_cfg_overlay=dict(file=str(path)))
    x = torch.randn(1, 3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(video.eval()(x), image.eval()(x[:, :, 0]), rtol=0, atol=0)
    # our own video checkpoint round-trips strictly; time embeddings for another clip length are resampled
    for blk in video.modules():
        if isinstance(blk, VideoR2LBlock):
            torch.nn.init.normal_(blk.temporal_embed)
    vpath = locvit.save_checkpoint(video, tmp_path / "video.safetensors")
    other = tiny_video(num_frames=4)
    assert locvit.load_checkpoint(other, vpath).exact
    a, b = (next(m for m in net.modules() if isinstance(m, VideoR2LBlock)).temporal_embed for net in (video, other))
    torch.testing.assert_close(b.data, resample_time(a.data, 4))
    assert b.shape[1] == 4 and torch.equal(resample_time(a, 8), a)


@pytest.mark.parametrize("vector", ["regionvit_3conv_ws7_pad_60x92.pt", "regionvit_linear_ws4_peg_64x48.pt"])
def test_official_checkpoint_inflates_to_the_official_logits(vector):
    """An official-format RegionViT state dict (the conformance vectors, made with the authors' code) loads into the
    video model configured the same way, and one-frame clips give the official logits (padding and PEG included)."""
    from pathlib import Path

    from locvit.models.regionvit_video import VideoRegionViT

    v = torch.load(Path(__file__).parent / "conformance" / "vectors" / "regionvit" / vector, weights_only=True)
    _, kwargs = locvit.official_model_args(v["official_class"], v["constructor_kwargs"])
    kwargs.pop("block_fn")
    model = VideoRegionViT(**kwargs).eval()
    assert locvit.load_checkpoint(model, v["state_dict"]).exact
    with torch.no_grad():
        torch.testing.assert_close(model(v["input"][:, :, None]), v["logits"], rtol=0, atol=1e-4)


def test_temporal_false_is_the_frame_averaged_image_model():
    model = tiny_video(temporal=False)
    assert not any(isinstance(m, VideoR2LBlock) for m in model.modules())
    assert set(model.state_dict()) == set(tiny_image().state_dict())


def test_frame_order_matters_once_trained_temporal_weights_exist():
    model = tiny_video().eval()
    for blk in model.modules():
        if isinstance(blk, VideoR2LBlock):
            torch.nn.init.normal_(blk.temporal_fc.weight, std=0.2)
            torch.nn.init.normal_(blk.temporal_embed, std=0.5)
    x = torch.randn(1, 3, 6, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x.flip(2)), atol=1e-4)


# --- decoding and sampling ---------------------------------------------------------------------------------------
def test_sample_indices():
    assert sample_indices(80, 8, "uniform") == [5, 15, 25, 35, 45, 55, 65, 75]
    assert sample_indices(80, 8, "uniform", clip=0, num_clips=2) == [2, 12, 22, 32, 42, 52, 62, 72]
    assert sample_indices(100, 4, "dense", stride=8) == [37, 45, 53, 61]  # the window in the middle
    assert sample_indices(100, 4, "dense", stride=8, clip=0, num_clips=3)[0] == 0
    assert sample_indices(100, 4, "dense", stride=8, clip=2, num_clips=3)[-1] == 99
    assert sample_indices(5, 4, "dense", stride=4) == [0, 4, 4, 4]  # short video: last frame repeated
    assert sample_indices(3, 8, "uniform") == [0, 0, 0, 1, 1, 2, 2, 2]  # short video: frames repeat
    import random

    rng = random.Random(0)
    draws = {tuple(sample_indices(100, 4, "dense", stride=8, rng=rng)) for _ in range(20)}
    assert len(draws) > 5 and all(list(d) == sorted(d) for d in draws)
    with pytest.raises(ValueError, match="sampling"):
        sample_indices(10, 4, "random")


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """root/{train,val}/{a,b}/ with an mp4, a webm (no frame count in the container) and a frame folder."""
    root = tmp_path_factory.mktemp("clips")
    for split in ("train", "val"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            write_video(d / "v1.mp4", gray_frames(20))
            write_video(d / "v2.webm", gray_frames(12), codec="libvpx-vp9")
            f = d / "v3"
            f.mkdir()
            for i, frame in enumerate(gray_frames(10)):
                Image.fromarray(frame).save(f / f"img_{i + 1}.png")  # natural order: img_10 after img_9
    return root


def test_decode_video_files_and_frame_folders(clip_folder):
    ds = VideoFolderDataset(clip_folder / "train", num_frames=4, sampling="uniform", training=False)
    assert ds.classes == ["a", "b"] and len(ds) == 6
    for i in range(len(ds)):
        clips, target = ds.load(i)
        n = {"v1.mp4": 20, "v2.webm": 12, "v3": 10}[ds.samples[i][0].name]
        expected = sample_indices(n, 4, "uniform")
        levels = [np.asarray(f).mean() / 10 for f in clips[0]]
        assert np.allclose(levels, expected, atol=0.3), (ds.samples[i][0].name, levels, expected)
        assert target == i // 3


def test_dataset_item_is_a_normalised_clip_tensor(clip_folder):
    ds = build_video_dataset(str(clip_folder), "val", num_frames=4, num_clips=2)
    data_cfg = dict(input_size=(3, 24, 24), interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3,
                    crop_pct=1.0)
    from locvit.data.loader import build_transform

    ds.transform = clip_eval_transform(build_transform(data_cfg, False), crops=3)
    clip, target = ds[0]
    assert clip.shape == (6, 3, 4, 24, 24)  # 2 clips x 3 crops


def test_unreadable_video_too_few_frames_and_empty_folder(tmp_path, clip_folder):
    bad = tmp_path / "bad" / "x"
    bad.mkdir(parents=True)
    (bad / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    ds = VideoFolderDataset(tmp_path / "bad", num_frames=4)
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        ds.load(0)
    record = ds[0][0]  # in a loader: skipped and counted like an unreadable image
    assert isinstance(record, Unreadable) and record.path.endswith("broken.mp4") and "decode" in record.reason
    from locvit.data.datasets import check_readable

    with pytest.raises(ValueError, match="no readable"):
        check_readable(ds)
    short = VideoFolderDataset(clip_folder / "train", num_frames=4, sampling="dense", frame_stride=8, short="error")
    with pytest.raises(VideoDecodeError, match="has 12 frames.*needs 25"):
        short.load(1)
    (tmp_path / "empty" / "c").mkdir(parents=True)
    (tmp_path / "empty" / "c" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no clips"):
        VideoFolderDataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        VideoFolderDataset(tmp_path / "missing")


# --- augmentation and evaluation ---------------------------------------------------------------------------------
def test_augmentation_is_the_same_on_every_frame():
    from locvit.data.loader import build_transform

    data_cfg = dict(input_size=(3, 32, 32), interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.9)
    frame_tf = build_transform(data_cfg, True, dict(auto_augment="rand-m9-mstd0.5-inc1", re_prob=1.0, hflip=0.5,
                                                    color_jitter=0.4, scale=(0.2, 1.0)))
    tf = clip_train_transform(frame_tf)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    torch.manual_seed(1)
    a = tf([[img] * 4])
    assert a.shape == (3, 4, 32, 32)
    for t in range(1, 4):
        torch.testing.assert_close(a[:, t], a[:, 0], rtol=0, atol=0)
    torch.manual_seed(2)
    assert not torch.equal(tf([[img] * 4]), a)  # and a new draw for the next clip


def test_three_crops_cover_the_longer_side():
    from locvit.data.loader import build_transform

    data_cfg = dict(input_size=(3, 16, 16), interpolation="bilinear", mean=(0,) * 3, std=(1,) * 3, crop_pct=1.0)
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (16, 1, 3))  # brighter to the right
    views = clip_eval_transform(build_transform(data_cfg, False), crops=3)([[Image.fromarray(ramp)]])
    means = views.mean(dim=(1, 2, 3, 4))
    assert means[0] < means[1] < means[2]


def test_multiview_model_averages_scores():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(4))
    x = torch.randn(2, 3, 3, 2, 4, 4)
    out = MultiViewModel(model, chunk=2)(x)
    probs = model(x.flatten(0, 1)).softmax(-1).view(2, 3, 4).mean(1)
    torch.testing.assert_close(out.exp(), probs)


def test_mixup_mixes_whole_clips():
    from timm.data import Mixup

    mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=3, label_smoothing=0.0)
    x = torch.arange(4.0).view(4, 1, 1, 1, 1).expand(4, 3, 5, 8, 8).clone()
    y = torch.tensor([0, 1, 2, 0])
    torch.manual_seed(0)
    mixed, soft = mix_batch(mixup, x, y)
    assert mixed.shape == x.shape and soft.shape == (4, 3)
    for t in range(1, 5):  # one box for every frame and channel
        torch.testing.assert_close(mixed[:, :, t], mixed[:, :, 0])


# --- training ----------------------------------------------------------------------------------------------------
def test_motion_clips_are_order_only():
    ds = MotionClips("val", length=4)
    for i, sign in ((0, -1), (1, 1)):  # class 0: the shape's column moves left; class 1: right
        frames = ds.frames(i)
        assert frames.shape == (8, 32, 32, 3) and ds.target(i) == i
        cols = [float((np.arange(32) * f.max(axis=(0, 2))).sum() / f.max(axis=(0, 2)).sum()) for f in frames]
        assert sign * (cols[-1] - cols[0]) > 0


MOTION = dict(embed_dim=[32, 64], depth=[1, 1], num_heads=[2, 2], downsampling=["c", "sc"], window_size=4)


def test_a_few_training_steps_reduce_the_loss():
    """The quick version of the motion-only check (docs/video.md): the motion recipe's model fits a batch of clips."""
    torch.manual_seed(0)
    ds = MotionClips("train", length=8)
    x = torch.stack([torch.from_numpy(ds.frames(i)).float().div(255).permute(3, 0, 1, 2) for i in range(8)])
    y = torch.tensor([ds.target(i) for i in range(8)])
    model = locvit.create_model("regionvit_video_tiny", num_classes=2, **MOTION)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.cross_entropy(model((x - 0.45) / 0.25), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_train_and_eval_commands_on_clips(tmp_path, clip_folder, capsys):
    from locvit.cli import main

    out = tmp_path / "run"
    args = ["train", "--task", "video", "--data", str(clip_folder), "--model", "regionvit_video_tiny",
            "--model-kwargs", f"embed_dim={json.dumps(TINY['embed_dim'])}", f"depth={json.dumps(TINY['depth'])}",
            f"num_heads={json.dumps(TINY['num_heads'])}", "window_size=4",
            "--img-size", "32", "--num-frames", "4", "--frame-sampling", "dense", "--frame-stride", "2",
            "--epochs", "1", "--batch-size", "2", "--workers", "2", "--output", str(out), "--no-tensorboard",
            "--aa", "none", "--amp", "off", "--repeated-aug", "1", "--warmup-epochs", "0"]
    assert main(args) == 0
    assert (out / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", "--task", "video", "--data", str(clip_folder), "--model", "regionvit_video_tiny",
                 "--checkpoint", str(out / "model.safetensors"), "--img-size", "32", "--num-frames", "4",
                 "--test-clips", "2", "--test-crops", "3", "--workers", "0",
                 "--model-kwargs", f"embed_dim={json.dumps(TINY['embed_dim'])}",
                 f"depth={json.dumps(TINY['depth'])}", f"num_heads={json.dumps(TINY['num_heads'])}",
                 "window_size=4"]) == 0
    printed = capsys.readouterr().out
    assert "6 videos, 2 clips x 3 crops of 4 frames" in printed and "top-5" in printed

    # the run directory alone: its model, data, size and clip sampling; views from a recipe (flags still win)
    recipe = tmp_path / "protocol.yaml"
    recipe.write_text("task: video\ntest_clips: 1\ntest_crops: 3\nframe_sampling: dense\nframe_stride: 2\n")
    assert main(["eval", "--checkpoint", str(out), "--config", str(recipe), "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "regionvit_video_tiny on " in printed and "6 videos, 1 clips x 3 crops of 4 frames" in printed
    assert main(["eval", "--checkpoint", str(out), "--test-crops", "1", "--workers", "0"]) == 0
    assert "1 clips x 1 crops of 4 frames" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(tmp_path), "--workers", "0"]) == 2  # not a run
    assert "not a run directory" in capsys.readouterr().err
    assert main(["eval", "--data", str(clip_folder)]) == 2
    assert "pass --model" in capsys.readouterr().err


def test_the_papers_video_model_and_its_timesformer_recipe(tmp_path):
    """regionvit_video_medium is RegionViT-M (1conv stem) with temporal attention; it inflates the RegionViT-M
    format, one-frame clips give the image model's logits; the TimeSformer-protocol recipe holds TimeSformer's
    K400 settings and its test views."""
    from locvit.engine.config import build_config

    small = dict(depth=[1, 1, 2, 1], num_classes=7, img_size=64)
    torch.manual_seed(0)
    image = locvit.create_model("regionvit_medium", **small).eval()
    path = locvit.save_checkpoint(image, tmp_path / "RegionViT-M.safetensors")
    video = timm.create_model("regionvit_video_medium", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              **small).eval()
    assert video.load_report.exact  # the filter inflates: temporal attention from the regional one
    x = torch.randn(2, 3, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(video(x), image(x[:, :, 0]), rtol=0, atol=0)
    assert video.pretrained_cfg["url"].endswith("/RegionViT-M.pth")

    cfg = build_config("regionvit_video_k400_timesformer", dict(data="/data/kinetics400"))
    assert (cfg.model, cfg.task, cfg.num_frames, cfg.frame_sampling, cfg.frame_stride) == (
        "regionvit_video_medium", "video", 8, "dense", 32)
    assert (cfg.test_clips, cfg.test_crops, cfg.epochs, cfg.opt, cfg.lr, cfg.scale_lr, cfg.momentum) == (
        1, 3, 15, "sgd", 0.005, False, 0.9)
    assert (cfg.weight_decay, cfg.sched, cfg.decay_milestones, cfg.decay_rate, cfg.warmup_epochs) == (
        1e-4, "multistep", [11, 14], 0.1, 0)
    assert (cfg.drop_path, cfg.smoothing, cfg.mixup, cfg.cutmix, cfg.batch_size * 8) == (0.1, 0.0, 0.0, 0.0, 8)
    with pytest.raises(ValueError, match="needs --decay-milestones"):
        build_config("regionvit_video_k400_timesformer", dict(data="x", decay_milestones=[]))


def test_flops_and_bench_count_clips(capsys):
    from locvit.bench.flops import count_flops
    from locvit.cli import main

    model = tiny_video()
    one = count_flops(model, (3, 1, 32, 32)).flops
    eight = count_flops(model, (3, 8, 32, 32)).flops
    assert 7.5 * one < eight < 8.5 * one  # temporal attention on the regional tokens costs almost nothing
    assert main(["flops", "--model", "regionvit_video_tiny", "--img-size", "64", "--num-frames", "4"]) == 0
    assert "4x64" in capsys.readouterr().out


@pytest.mark.heavy
def test_motion_only_check(tmp_path):
    """docs/video.md: the shipped recipes. The video model learns the direction of motion; the frame-averaged image
    model (the same network, temporal=False) stays at chance, as it must on clips whose frames are shared by both
    classes."""
    from locvit.engine.config import build_config
    from locvit.engine.train import train

    video = train(build_config("regionvit_video_motion", dict(output=str(tmp_path / "video"))))
    frames = train(build_config("regionvit_video_motion_baseline", dict(output=str(tmp_path / "frames"))))
    assert video["top1"] >= 90, video
    assert 40 <= frames["top1"] <= 60, frames

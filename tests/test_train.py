"""The training tool chain end to end on the embedded dataset: resume after SIGKILL bit for bit, DDP equals one
process, unreadable images skipped and counted, non-finite loss stops cleanly, configs merge as documented."""
import decimal
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from locvit.engine.config import build_config

TINY = ["--model", "localvit_tiny", "--model-kwargs", "depth=1", "embed_dim=32", "num_heads=2", "reduction=4",
        "--img-size", "32", "--workers", "0", "--aa", "none", "--reprob", "0", "--warmup-epochs", "1",
        "--lr", "1e-3", "--no-tensorboard"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def locvit(*args, check=True, **kw):
    proc = subprocess.run([sys.executable, "-m", "locvit", *map(str, args)], capture_output=True, text=True,
                          env=ENV, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"locvit {' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def weights(run):
    return load_file(str(Path(run) / "model.safetensors"))


def test_kill_and_resume_is_bit_exact(tmp_path):
    common = [*TINY, "--data", "digits", "--epochs", "2", "--batch-size", "32", "--checkpoint-interval", "4",
              "--max-steps", "60", "--drop-path", "0.1", "--mixup", "0.8", "--cutmix", "1.0"]
    full = tmp_path / "full"
    locvit("train", *common, "--output", full)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "locvit", "train", *common, "--output", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    ckpt = killed / "last.pth"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] < 60, "the run finished before it could be killed"
    assert not (killed / "model.safetensors").exists()
    assert not any(p.name.endswith(".tmp") for p in killed.iterdir() if p.name != ".")

    out = locvit("train", *common, "--output", killed, "--resume")
    assert "resumed from" in out.stdout
    a, b = weights(full), weights(killed)
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"resumed weights differ from the uninterrupted run in {diff[:5]}"


def test_ddp_matches_single_process(tmp_path):
    # a BatchNorm-free model: with BN, per-process statistics (the papers' DDP setting) differ by design
    vit = ["--model", "deit_tiny_patch16_224_ex6", "--model-kwargs", "depth=1", "embed_dim=32", "num_heads=2",
           "patch_size=8", *TINY[TINY.index("--img-size"):]]
    common = [*vit, "--data", "digits", "--epochs", "1", "--mixup", "0", "--cutmix", "0", "--drop-path", "0",
              "--repeated-aug", "1", "--max-steps", "12"]
    single = tmp_path / "single"
    locvit("train", *common, "--batch-size", "32", "--output", single)
    ddp = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29561",
                "-m", "locvit", "train", *common, "--batch-size", "16", "--output", str(ddp)]
    proc = subprocess.run(torchrun, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = weights(single), weights(ddp)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs between DDP and one process")
    sa = torch.load(single / "last.pth", weights_only=True)
    sb = torch.load(ddp / "last.pth", weights_only=True)
    assert sa["global_step"] == sb["global_step"] == 12


def _image_folder(root: Path, corrupt: int = 0, good: bool = True):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(8 if good else 0):
                arr = (rng.random((24, 24, 3)) * 255).astype(np.uint8)
                arr[..., 0 if c == "cat" else 2] = 255
                Image.fromarray(arr).save(d / f"{i}.png")
    for i in range(corrupt):
        (root / "train" / "cat" / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * (i + 1))
    if corrupt:
        good_png = next((root / "val" / "dog").glob("*.png")) if good else None
        if good_png:
            data = good_png.read_bytes()
            (root / "val" / "dog" / "truncated.png").write_bytes(data[: len(data) // 3])


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    data = tmp_path / "data"
    _image_folder(data, corrupt=4)  # 16 + 4 training files: every one is drawn in a batch of 4
    out = locvit("train", *TINY, "--data", data, "--epochs", "1", "--batch-size", "4", "--mixup", "0",
                 "--cutmix", "0", "--repeated-aug", "1", "--output", tmp_path / "run")
    assert "unreadable images skipped" in out.stdout
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header, row = rows[0].split(","), rows[1].split(",")
    assert int(row[header.index("skipped")]) == 5  # 4 in train, the truncated one in val


def test_dataset_without_readable_image_fails_before_training(tmp_path):
    data = tmp_path / "data"
    _image_folder(data, corrupt=3, good=False)
    for c in ("dog",):
        (data / "train" / c / "x.jpg").write_bytes(b"garbage")
    proc = locvit("train", *TINY, "--data", data, "--epochs", "1", "--batch-size", "2", "--output",
                  tmp_path / "run", check=False)
    assert proc.returncode == 2
    assert "no readable image" in proc.stderr or "holds no images" in proc.stderr
    assert not (tmp_path / "run" / "last.pth").exists()


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = locvit("train", *TINY, "--lr", "1e30", "--warmup-epochs", "0", "--data",
                  "digits", "--epochs", "1", "--batch-size", "32", "--mixup", "0", "--cutmix", "0",
                  "--checkpoint-interval", "1", "--output", run, check=False)
    assert proc.returncode != 0
    assert "non-finite loss" in proc.stderr and "step" in proc.stderr
    state = torch.load(run / "last.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_config_precedence_and_saved_config(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: localvit_in1k\nepochs: 7\nbatch_size: 16\n")
    cfg = build_config(str(recipe), {"model": "localvit_small", "batch_size": 8})
    assert cfg.epochs == 7 and cfg.batch_size == 8  # file over recipe, flags over file
    assert cfg.model_ema and cfg.repeated_aug == 3  # LocalViT's recipe: EMA and repeated augmentation on
    focal = build_config("focal_small_in1k")
    assert focal.clip_grad == 5.0 and focal.warmup_epochs == 20 and focal.drop_path == 0.3
    with pytest.raises(ValueError, match="unknown config fields"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("epoch: 3\n")
        build_config(str(bad))


def test_train_then_eval_and_saved_config(tmp_path):
    run = tmp_path / "run"
    locvit("train", *TINY, "--data", "digits", "--epochs", "1", "--batch-size", "64", "--mixup", "0",
           "--cutmix", "0", "--output", run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"] == "localvit_tiny" and cfg["img_size"] == 32 and cfg["model_kwargs"]["depth"] == 1
    assert (run / "curves.png").stat().st_size > 1000
    row = (run / "metrics.csv").read_text().splitlines()
    top1 = float(row[1].split(",")[row[0].split(",").index("top1")])
    out = locvit("eval", "--model", "localvit_tiny", "--model-kwargs", "depth=1", "embed_dim=32", "num_heads=2",
                 "reduction=4", "--img-size", "32", "--checkpoint", run / "best.safetensors", "--data", "digits",
                 "--workers", "0")
    assert f"top-1 {top1:.2f}" in out.stdout


def test_missing_cifar_says_where_to_put_it(tmp_path):
    proc = locvit("eval", "--model", "localvit_tiny", "--data", f"cifar10:{tmp_path}", check=False)
    assert proc.returncode == 2 and "cifar-10-batches-py" in proc.stderr and "downloads nothing" in proc.stderr


def test_pickled_checkpoint_needs_trust(tmp_path):
    model_dir = tmp_path / "w"
    model_dir.mkdir()
    from locvit import create_model

    m = create_model("localvit_tiny", depth=1, embed_dim=32, num_heads=2, reduction=4, num_classes=10, img_size=32)
    torch.save({"model": m.state_dict(), "cfg": decimal.Decimal("1.5")}, model_dir / "pickled.pth")  # not a tensor
    args = ["eval", "--model", "localvit_tiny", "--model-kwargs", "depth=1", "embed_dim=32", "num_heads=2",
            "reduction=4", "--img-size", "32", "--checkpoint", model_dir / "pickled.pth", "--workers", "0"]
    proc = locvit(*args, check=False)
    assert proc.returncode == 2 and "--trust-checkpoint" in proc.stderr
    assert "top-1" in locvit(*args, "--trust-checkpoint").stdout

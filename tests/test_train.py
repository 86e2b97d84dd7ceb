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
        "--img-size", "32", "--warmup-epochs", "0",
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
    common = [*TINY, "--warmup-epochs", "1", "--data", "digits", "--epochs", "2", "--batch-size", "32",
              "--checkpoint-interval", "4",
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
        # float rounding differs (two half-batch gradients summed); AdamW turns it into up to ~3e-5 on the key biases,
        # whose true gradient is zero -- far below the 1e-3 steps training takes
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=f"{k} differs between DDP and one process")
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
    # the recipe's repeated augmentation (3 draws of each image an epoch) and worker processes, as users run it
    out = locvit("train", *TINY, "--data", data, "--epochs", "1", "--batch-size", "4", "--mixup", "0",
                 "--cutmix", "0", "--output", tmp_path / "run")
    assert "5 unreadable images skipped: " in out.stdout and "bad0.jpg" in out.stdout
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header, row = rows[0].split(","), rows[1].split(",")
    assert int(row[header.index("skipped")]) == 5  # 4 in train, the truncated one in val: each counted once
    listed = (tmp_path / "run" / "unreadable.txt").read_text().splitlines()
    assert sorted(Path(p).name for p in listed) == ["bad0.jpg", "bad1.jpg", "bad2.jpg", "bad3.jpg", "truncated.png"]


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
    recipe.write_text("base: localvit_in1k\nepochs: 7\nbatch_size: 16\ndata: digits\n")
    cfg = build_config(str(recipe), {"model": "localvit_small", "batch_size": 8})
    assert cfg.epochs == 7 and cfg.batch_size == 8  # file over recipe, flags over file
    assert cfg.model_ema and cfg.repeated_aug == 3  # LocalViT's recipe: EMA and repeated augmentation on
    focal = build_config("focal_small_in1k", {"data": "digits"})
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
                 "reduction=4", "--img-size", "32", "--checkpoint", run / "best.safetensors", "--data", "digits")
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
            "reduction=4", "--img-size", "32", "--checkpoint", model_dir / "pickled.pth", "--data", "digits"]
    proc = locvit(*args, check=False)
    assert proc.returncode == 2 and "--trust-checkpoint" in proc.stderr
    assert "top-1" in locvit(*args, "--trust-checkpoint").stdout


# --- the commands' contracts: resume, bad settings, writes -----------------------------------------------------------
QUICK = [*TINY, "--data", "digits", "--epochs", "2", "--batch-size", "64", "--mixup", "0", "--cutmix", "0",
         "--max-steps", "3"]


def test_resume_needs_a_run_and_refuses_other_settings(tmp_path):
    run = tmp_path / "run"
    proc = locvit("train", *QUICK, "--output", run, "--resume", check=False)  # nothing there yet
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr and "Traceback" not in proc.stderr
    proc = locvit("train", *QUICK, "--resume", tmp_path / "typo", check=False)
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr

    locvit("train", *QUICK, "--output", run)
    for change, what in ((["--batch-size", "32"], "batch_size"), (["--seed", "1"], "seed"),
                         (["--model", "regionvit_tiny"], "model"), (["--data", tmp_path], "data")):
        proc = locvit("train", *QUICK, "--output", run, "--resume", *change, check=False)
        assert proc.returncode == 2 and what in proc.stderr and "--allow-config-change" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    # `--resume DIR` alone takes the run's own settings (and its output folder)
    out = locvit("train", "--resume", run, "--max-steps", "5")
    assert "resumed from" in out.stdout
    assert torch.load(run / "last.pth", weights_only=True)["global_step"] == 5
    # told otherwise, a changed batch size resumes at the same sample position
    out = locvit("train", *QUICK, "--output", run, "--resume", "--batch-size", "32", "--allow-config-change",
                 "--max-steps", "8")
    state = torch.load(run / "last.pth", weights_only=True)
    assert state["samples_in_epoch"] == 5 * 64 + 3 * 32 and state["config"]["batch_size"] == 32


def test_resumed_metrics_equal_the_uninterrupted_run(tmp_path):
    """An epoch interrupted mid-way and resumed logs the same metrics.csv row as an uninterrupted one (all but the
    wall-clock columns): the running totals travel in last.pth."""
    common = [*TINY, "--data", "digits", "--epochs", "2", "--batch-size", "64", "--mixup", "0", "--cutmix", "0",
              "--checkpoint-interval", "3"]
    locvit("train", *common, "--output", tmp_path / "full")
    locvit("train", *common, "--output", tmp_path / "cut", "--max-steps", "7")  # stops inside epoch 1 (67 steps)
    locvit("train", *common, "--output", tmp_path / "cut", "--resume", "--max-steps", "80")  # ...and inside epoch 2
    locvit("train", *common, "--output", tmp_path / "cut", "--resume")

    def rows(run):
        lines = (run / "metrics.csv").read_text().splitlines()
        head = lines[0].split(",")
        return [{k: v for k, v in zip(head, ln.split(",")) if k not in ("images_per_s", "epoch_time_s")}
                for ln in lines[1:]]

    assert rows(tmp_path / "full") == rows(tmp_path / "cut")
    assert len(rows(tmp_path / "full")) == 2


def test_bad_settings_are_refused_before_any_work(tmp_path):
    cases = [([], "pass --data"), (["--data", "digits", "--epochs", "0"], "--epochs must be at least 1"),
             (["--data", "digits", "--epochs", "2", "--warmup-epochs", "5"], "--warmup-epochs N with N < 2"),
             (["--data", "digits", "--batch-size", "0"], "--batch-size"),
             (["--data", "digits", "--drop-path", "1.5"], "--drop-path")]
    for args, msg in cases:
        proc = locvit("train", "--model", "localvit_tiny", "--output", tmp_path / "r", *args, check=False)
        assert proc.returncode == 2 and msg in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_unwritable_output_and_full_disk_are_reported_up_front(tmp_path, monkeypatch):
    import shutil

    from locvit.files import check_writable

    if os.geteuid() == 0:  # root writes anywhere: a regular file where the folder should be fails for everyone
        blocked = tmp_path / "file"
        blocked.write_text("x")
        target = blocked / "run"
    else:
        blocked = tmp_path / "ro"
        blocked.mkdir()
        blocked.chmod(0o500)
        target = blocked / "run"
    proc = locvit("train", *QUICK, "--output", target, check=False)
    assert proc.returncode == 2 and "cannot write to" in proc.stderr and "--output" in proc.stderr
    assert "Traceback" not in proc.stderr

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100 << 30, 100 << 30, 1 << 20))
    with pytest.raises(ValueError, match="not enough free disk space .* 1 MB free"):
        check_writable(tmp_path / "ok", need_bytes=50 << 20)


def test_a_killed_write_leaves_no_temp_file_behind(tmp_path):
    """A kill during an atomic write leaves `.last.pth.<pid>-<random>.tmp`; the next write (or the next run)
    removes it, because its process is gone. A live writer's temp file is left alone."""
    from locvit.files import atomic_write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".last.pth.{int(dead.stdout)}-abc123.tmp"
    stale.write_bytes(b"\0" * 1000)
    live = tmp_path / f".last.pth.{os.getppid()}-def456.tmp"
    live.write_bytes(b"\0")
    atomic_write_text(tmp_path / "metrics.csv", "a,b\n")
    assert not stale.exists() and live.exists()


def test_nan_loss_without_a_checkpoint_says_so(tmp_path):
    run = tmp_path / "run"
    proc = locvit("train", *TINY, "--lr", "1e30", "--data", "digits", "--epochs", "1", "--batch-size", "32",
                  "--mixup", "0", "--cutmix", "0", "--output", run, check=False)
    assert proc.returncode == 1 and "non-finite loss" in proc.stderr and "Traceback" not in proc.stderr
    assert "no checkpoint was written" in proc.stderr and not (run / "last.pth").exists()


def test_multistep_schedule_follows_its_milestones(tmp_path):
    """--sched multistep --decay-milestones (TimeSformer's K400 schedule): the lr of each epoch is the base lr times
    decay_rate per milestone passed."""
    run = tmp_path / "steps"
    locvit("train", *TINY, "--data", "digits", "--epochs", "3", "--batch-size", "512", "--repeated-aug", "1",
           "--mixup", "0", "--cutmix", "0", "--opt", "sgd", "--lr", "0.01", "--sched", "multistep",
           "--decay-milestones", "1", "2", "--decay-rate", "0.1", "--output", run)
    lines = (run / "metrics.csv").read_text().splitlines()
    lrs = [float(dict(zip(lines[0].split(","), ln.split(",")))["lr"]) for ln in lines[1:]]
    assert lrs == pytest.approx([0.01, 0.001, 0.0001], rel=1e-6)
    # stepped per update, milestone m is still the first epoch's first update at the decayed lr
    import torch
    from timm.scheduler import create_scheduler_v2

    from locvit.engine.optim import timm_milestones

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched, _ = create_scheduler_v2(opt, sched="multistep", num_epochs=3, warmup_epochs=0, step_on_epochs=False,
                                   updates_per_epoch=4, decay_rate=0.5, decay_milestones=timm_milestones([1, 2], 4))
    got = []
    for t in range(12):
        sched.step_update(num_updates=t)
        got.append(opt.param_groups[0]["lr"])
    assert got == [1.0] * 4 + [0.5] * 4 + [0.25] * 4
    proc = locvit("train", *TINY, "--data", "digits", "--sched", "multistep", "--output", tmp_path / "x", check=False)
    assert proc.returncode == 2 and "--decay-milestones" in proc.stderr


# --- run directories: nothing overwritten without a word -------------------------------------------------------------
def in_process(*args):
    """``locvit ARGS`` in this process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    from locvit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def fake_run(folder, config, **state):
    """A run directory as the loops leave it: the run's config.yaml and, given ``state``, a last.pth holding the
    position fields they save (and the config)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(dict(config, output=str(folder))))
    if state:
        torch.save(dict(state, config=dict(config, output=str(folder)), model={}), folder / "last.pth")
    return folder


def test_output_holding_a_run_is_refused_before_any_work(tmp_path, monkeypatch):
    """`locvit train` into a folder that holds a run refuses (exit 2, one line) unless --resume or --overwrite,
    saying which run it holds and how far it got; the wrong command's run is named with the command that continues
    it. Nothing is read or built first, nothing in the folder changes. Empty folders and unrelated files are fine."""
    import locvit.engine.train as engine
    from locvit.dense.config import DetectConfig
    from locvit.engine.run import start_run

    def forbidden(*a, **k):
        raise AssertionError("data read or model built before the run directory was checked")

    monkeypatch.setattr(engine, "build_dataset", forbidden)
    monkeypatch.setattr(engine, "create_model", forbidden)
    cls = build_config(None, dict(model="localvit_tiny", data="digits", epochs=5, warmup_epochs=0)).to_dict()
    after = fake_run(tmp_path / "after", cls, epoch=2, step_in_epoch=67, epoch_totals=[None], global_step=201)
    inside = fake_run(tmp_path / "inside", cls, epoch=1, step_in_epoch=4, epoch_totals=[dict(seen=256)])
    done = fake_run(tmp_path / "done", cls, epoch=4, step_in_epoch=67, epoch_totals=[None])
    video = fake_run(tmp_path / "video", dict(cls, task="video"), epoch=0, epoch_totals=[None])
    det = fake_run(tmp_path / "det", DetectConfig(iters=100).to_dict(), global_step=40, history=[])
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "best.safetensors").write_bytes(b"old")
    cases = [
        (["--output", after], f"{after} already holds a `locvit train` run (partial: last.pth after epoch 3 of 5); "
                              "pass --resume to continue it or --overwrite to start again in it, or choose another "
                              "--output"),
        (["--output", inside], "(partial: last.pth in epoch 2 of 5, step 4); pass --resume to continue it"),
        (["--output", done], "run (finished, 5 epochs); pass --overwrite to start again in it, or choose another"),
        (["--output", video], f"{video} already holds a `locvit train --task video` run (partial: last.pth after "
                              "epoch 1 of 5)"),
        (["--output", det], f"{det} holds a `locvit detect train` run (partial: last.pth at iteration 40 of 100), "
                            "not a `locvit train` run; choose another --output, or pass --overwrite to replace it"),
        (["--resume", det], f"not a `locvit train` run: continue it with `locvit detect train --resume {det}`"),
        (["--output", weights], f"{weights} already holds a run (partial: best.safetensors, no last.pth); pass "
                                "--overwrite to start again in it"),
        (["--output", after, "--resume", "--overwrite"], "--resume continues the run in"),
    ]
    listing = {p: sorted(p.iterdir()) for p in (after, inside, done, video, det, weights)}
    for args, msg in cases:
        rc, _, err = in_process("train", *QUICK, "--workers", "0", *args)
        assert rc == 2 and err.startswith("locvit train: error: ") and msg in err, (args, err)
    assert listing == {p: sorted(p.iterdir()) for p in listing}
    assert (weights / "best.safetensors").read_bytes() == b"old"

    # what holds no run is used as it is: a missing or empty folder, unrelated files (a config.yaml that is not a
    # run's, a metrics.csv of something else, other weights)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("lr: 0.1\n")
    (other / "metrics.csv").write_text("name,score\n")
    (other / "weights.safetensors").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "new", tmp_path / "empty", other):
        start = start_run(build_config(None, dict(data="digits", output=str(folder))))
        assert start.resume_from is None and start.replace is None


def test_overwrite_replaces_a_run_without_mixing_the_two(tmp_path):
    """--overwrite moves the old run's files into replaced_run/ when the new run writes its first file and deletes
    them when it ends: a new run killed on the way leaves the old weights at hand and no mix of the two runs'
    files; the next --overwrite keeps that old run and discards the killed one's files."""
    from safetensors.torch import save_file

    from locvit.engine.run import read_run

    run = tmp_path / "run"
    args = [*QUICK, "--workers", "0", "--output", run]
    config = build_config(None, dict(model="localvit_tiny", data="digits", epochs=2, warmup_epochs=0)).to_dict()
    old = fake_run(run, config, epoch=1, epoch_totals=[None])
    save_file({"w": torch.ones(2)}, str(run / "best.safetensors"))
    save_file({"w": torch.ones(2)}, str(run / "model_ema.safetensors"))
    (run / "metrics.csv").write_text("epoch,train_loss,top1\n1,2.0,50.0\n2,1.0,60.0\n")
    (run / "unreadable.txt").write_text("bad.png\n")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out").write_bytes(b"old")
    before = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}

    # the new run is killed after its first file: the old run is whole in replaced_run/, the folder holds the new
    # run's config.yaml only
    import locvit.engine.train as engine

    def killed(*a, **k):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "save_checkpoint", killed)
        rc, out, _ = in_process("train", *args, "--overwrite", "--no-model-ema", "--seed", "3")
    assert rc == 130 and f"{run} held a `locvit train` run (finished, 2 epochs)" in out
    kept = run / "replaced_run"
    assert {p.relative_to(kept): p.read_bytes() for p in kept.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "replaced_run"]
    assert "overwrite" not in yaml.safe_load((run / "config.yaml").read_text())  # a recipe never carries it
    assert "partial: config.yaml, no last.pth" in str(read_run(run))

    # the next --overwrite discards the killed run, keeps the old one until it ends, then only its own files remain
    rc, out, err = in_process("train", *args, "--overwrite", "--no-model-ema", "--seed", "3")
    assert rc == 0, err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "last.pth", "model.safetensors"]
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 3
    # and it is refused like any run, without the flag
    rc, _, err = in_process("train", *args)
    assert rc == 2 and "(partial: last.pth in epoch 1 of 2, step 3); pass --resume" in err


def test_demo_reruns_replace_their_own_runs(tmp_path, monkeypatch):
    """`locvit demo` (and `make demo`) run twice into the same folder: the demo passes `overwrite`, so the second
    run gets past the run-directory check (to the data, stopped here) instead of refusing the first run's folders."""
    import locvit.dense.segment as segment
    import locvit.engine.train as engine
    from locvit.demo import run_demo
    from locvit.dense.config import SegmentConfig
    from locvit.dense.demo import run_dense_demo

    class ReachedTheData(Exception):
        pass

    def stop(*a, **k):
        raise ReachedTheData

    monkeypatch.setattr(engine, "build_dataset", stop)
    monkeypatch.setattr(segment, "load_split", stop)
    fake_run(tmp_path / "demo" / "localvit", build_config("digits", dict(model="localvit_tiny")).to_dict(),
             epoch=4, epoch_totals=[None])
    (tmp_path / "seg" / "data" / "images").mkdir(parents=True)  # the generated data are there already
    fake_run(tmp_path / "seg" / "vvt", SegmentConfig(epochs=12).to_dict(), global_step=144, history=[])
    with pytest.raises(ReachedTheData):
        run_demo(tmp_path / "demo", families=["LocalViT"])
    with pytest.raises(ReachedTheData):
        run_dense_demo("segment", tmp_path / "seg", families=["VVT"])


@pytest.mark.heavy
def test_ddp_steps_together_when_one_rank_has_no_readable_image(tmp_path):
    """Under torchrun, a step in which one process's batch held no readable image is skipped by every process
    (a process skipping alone would leave the others waiting in DDP's gradient all-reduce for good)."""
    _image_folder(tmp_path / "data", corrupt=6)
    out = tmp_path / "ddp"
    # one image per process and step, in a seeded order: with 6 of 22 training images unreadable, some step gives
    # one process an unreadable image while the other's reads
    args = [*TINY, "--data", tmp_path / "data", "--epochs", "2", "--batch-size", "1", "--mixup", "0", "--cutmix",
            "0", "--repeated-aug", "1", "--workers", "0", "--output", out]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29563",
                "-m", "locvit", "train", *map(str, args)]
    proc = subprocess.run(torchrun, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file()
    listed = (out / "unreadable.txt").read_text()
    assert all(f"bad{i}.jpg" in listed for i in range(6))

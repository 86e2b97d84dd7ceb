"""Training at the papers' scale on fewer devices: gradient accumulation (the large batch's update, in float64),
WebDataset shards (a shard run is the folder run), two torchrun "nodes" on one machine (the one-node run's metrics,
also after a rank is killed and the run resumed), TensorBoard files, and the bad inputs of each."""
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from locvit.engine.step import GradAccumulator
from test_dense_tasks import VVT, _resume_bit_exact, kv, seg_data  # noqa: F401  (seg_data: a fixture)
from test_dense_tasks import locvit as cli  # in this process: no interpreter start-up per command
from test_train import ENV, TINY, _image_folder, weights


def _vit(**kw):
    from locvit import create_model

    # no BatchNorm (its statistics depend on the batch) and no qkv bias (the key bias has a zero true gradient, which
    # AdamW's normalisation would turn from rounding noise into a full step)
    return create_model("deit_tiny_patch16_224_ex6", depth=1, embed_dim=32, num_heads=2, patch_size=8, img_size=32,
                        num_classes=5, qkv_bias=False, drop_path_rate=0.0, **kw)


@pytest.mark.parametrize("clip_grad,scaled", [(None, False), (0.05, False), (0.05, True)])
def test_grad_accumulation_equals_the_large_batch_in_float64(clip_grad, scaled):
    """Four micro-batches of 2 make the update of one batch of 8 (AdamW, the clip on the accumulated gradient;
    through fp16 training's grad scaler, whose power-of-two scale is undone exactly, when ``scaled``)."""
    from timm.optim import create_optimizer_v2
    from timm.utils import NativeScaler

    torch.manual_seed(0)
    ref = _vit().double()
    acc = _vit().double()
    acc.load_state_dict(ref.state_dict())
    images = torch.randn(3, 8, 3, 32, 32, dtype=torch.float64)
    targets = torch.randint(0, 5, (3, 8))
    opts = [create_optimizer_v2(m, opt="adamw", lr=1e-2, weight_decay=0.05) for m in (ref, acc)]
    big = GradAccumulator(ref, opts[0], None, clip_grad, ref.parameters(), steps=1)
    small = GradAccumulator(acc, opts[1], NativeScaler("cpu") if scaled else None, clip_grad, acc.parameters(),
                            steps=4)
    loss = torch.nn.CrossEntropyLoss()
    for x, y in zip(images, targets):
        big.backward(loss(ref(x), y))
        assert big.step()
        stepped = []
        for xs, ys in zip(x.split(2), y.split(2)):
            with small.context():
                small.backward(loss(acc(xs), ys))
            stepped.append(small.step())
        assert stepped == [False, False, False, True]  # one optimiser step per window
        assert all(p.grad is None for p in acc.parameters())  # cleared for the next window
    for (name, a), b in zip(ref.named_parameters(), acc.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=f"{name} differs from the large batch's update")
    moved = sum((a - b).abs().sum() for a, b in zip(ref.parameters(), _vit().double().parameters()))
    assert moved > 0


def test_grad_accumulation_in_training_counts_optimiser_steps(tmp_path):
    """`--batch-size 16 --grad-accum-steps 2` trains as `--batch-size 32`: the same samples per optimiser step, the
    learning rate scaled by the global batch, the schedule, --max-steps and the checkpoint in optimiser steps."""
    vit = ["--model", "deit_tiny_patch16_224_ex6", "--model-kwargs", "depth=1", "embed_dim=32", "num_heads=2",
           "patch_size=8", "qkv_bias=false", *TINY[TINY.index("--img-size"):]]  # no BatchNorm, no key bias
    common = [*vit, "--data", "digits", "--epochs", "2", "--mixup", "0", "--cutmix", "0", "--drop-path", "0",
              "--repeated-aug", "1", "--max-steps", "50", "--workers", "0", "--warmup-epochs", "1"]
    cli("train", *common, "--batch-size", "32", "--output", tmp_path / "big")
    cli("train", *common, "--batch-size", "16", "--grad-accum-steps", "2", "--output", tmp_path / "acc")
    a, b = weights(tmp_path / "big"), weights(tmp_path / "acc")
    for k in a:  # float32: the two half-batch means are summed in another order
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=f"{k} differs from the large batch")
    sa, sb = (torch.load(tmp_path / r / "last.pth", weights_only=True) for r in ("big", "acc"))
    assert sa["global_step"] == sb["global_step"] == 50  # 44 optimiser steps an epoch, then 6 into the second
    assert sa["step_in_epoch"] == sb["step_in_epoch"] == 6 and sb["samples_in_epoch"] == 6 * 32
    assert sa["optimizer"]["param_groups"][0]["lr"] == pytest.approx(sb["optimizer"]["param_groups"][0]["lr"])


def test_grad_accumulation_resumes_at_a_window_boundary(tmp_path):
    """A run stopped and resumed with accumulation ends with the uninterrupted run's weights, bit for bit; resuming
    with another --grad-accum-steps (another global batch) is refused."""
    common = [*TINY, "--data", "digits", "--epochs", "1", "--batch-size", "16", "--grad-accum-steps", "3",
              "--mixup", "0", "--cutmix", "0", "--workers", "0", "--checkpoint-interval", "4"]
    cli("train", *common, "--max-steps", "10", "--output", tmp_path / "full")
    cli("train", *common, "--max-steps", "5", "--output", tmp_path / "cut")
    state = torch.load(tmp_path / "cut" / "last.pth", weights_only=True)
    assert state["global_step"] == 5 and state["samples_in_epoch"] == 5 * 3 * 16
    cli("train", *common, "--max-steps", "10", "--output", tmp_path / "cut", "--resume")
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    proc = cli("train", *common, "--grad-accum-steps", "2", "--output", tmp_path / "cut", "--resume",
                  check=False)
    assert proc.returncode == 2 and "grad_accum_steps: 3 -> 2" in proc.stderr


@pytest.mark.parametrize("value", ["0", "-2"])
def test_grad_accum_steps_below_one_is_refused(tmp_path, value):
    proc = cli("train", *TINY, "--data", "digits", "--grad-accum-steps", value, "--output", tmp_path / "r",
                  check=False)
    assert proc.returncode == 2 and "--grad-accum-steps must be at least 1" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


SEG = ["segment", "train", "--model", "vvt_tiny", "--model-kwargs", *kv(VVT), "--num-classes", "3",
       "--decoder-channels", "16", "--crop-size", "64", "64", "--scale", "96", "64", "--test-scale", "96", "64",
       "--warmup-iters", "1", "--sched", "poly", "--lr", "1e-3", "--no-tensorboard", "--workers", "0"]


def test_dense_loop_accumulates_and_resumes_between_windows(seg_data, tmp_path):  # noqa: F811
    """The dense loop steps through the same GradAccumulator: iterations are optimiser steps of 2 micro-batches,
    and a run stopped and resumed ends with the uninterrupted run's weights bit for bit."""
    run = _resume_bit_exact(tmp_path, [*SEG, "--data", seg_data, "--batch-size", "1", "--grad-accum-steps", "2"], 4)
    state = torch.load(run / "last.pth", weights_only=True)
    assert state["global_step"] == 4 and state["config"]["grad_accum_steps"] == 2
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[-1].split(",")[0] == "4"  # one evaluation, at iteration 4
    # 8 training images = 4 optimiser steps of 2 x 1: an epoch is whole windows
    assert float(dict(zip(rows[0].split(","), rows[-1].split(",")))["epoch"]) == 1.0


# --- WebDataset shards ------------------------------------------------------------------------------------------
def _shards(tmp_path, shard_size=5):
    data = tmp_path / "data"
    _image_folder(data)  # 2 classes x 8 images per split
    out = cli("shards", "--data", data, "--output", tmp_path / "shards", "--shard-size", shard_size)
    assert f"train: 16 samples in {-(-16 // shard_size)} shards" in out.stdout
    return data, tmp_path / "shards"


def test_shards_run_equals_the_folder_run(tmp_path):
    """The same 16 images as a folder and as 4 shards: one batch an epoch holds them all, augmentation is seeded by
    the sample's index either way, so the two runs train the same model and score the same."""
    data, shards = _shards(tmp_path)
    info = json.loads((shards / "_info.json").read_text())
    assert info["classes"] == ["cat", "dog"] and info["splits"]["val"]["shard_lengths"] == [5, 5, 5, 1]
    common = [*TINY, "--epochs", "3", "--batch-size", "16", "--repeated-aug", "1", "--mixup", "0", "--cutmix", "0",
              "--workers", "0"]
    cli("train", *common, "--data", data, "--output", tmp_path / "folder")
    cli("train", *common, "--data", f"wds:{shards}", "--output", tmp_path / "wds")
    a, b = weights(tmp_path / "folder"), weights(tmp_path / "wds")
    for k in a:  # the batch's mean loss sums the same 16 terms in another order
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs between folder and shards")

    def scores(run):
        lines = (run / "metrics.csv").read_text().splitlines()
        head = lines[0].split(",")
        return [{k: v for k, v in zip(head, ln.split(",")) if k in ("epoch", "top1", "top5")} for ln in lines[1:]]

    assert scores(tmp_path / "folder") == scores(tmp_path / "wds") and len(scores(tmp_path / "wds")) == 3
    # eval on a shard pattern scores what the folder scores
    ev = ["eval", "--model", "localvit_tiny", "--model-kwargs", "depth=1", "embed_dim=32", "num_heads=2",
          "reduction=4", "--img-size", "32", "--checkpoint", tmp_path / "wds" / "model.safetensors", "--workers", "0"]
    on_folder = cli(*ev, "--data", data).stdout
    on_shards = cli(*ev, "--data", f"wds:{shards}/val-{{000000..000003}}.tar").stdout
    assert "16 images" in on_shards and on_folder.split("top-1")[1] == on_shards.split("top-1")[1]


def test_shard_streams_see_each_sample_once(tmp_path):
    """Evaluation: every sample once over 2 ranks x 2 workers. Training: each rank's epoch is whole optimiser
    steps of distinct samples in a seeded order, and a resumed epoch continues it exactly."""
    from locvit.data.loader import build_loader, set_loader_epoch, steps_per_epoch
    from locvit.data.shards import ShardDataset, ShardSpec

    _, shards = _shards(tmp_path, shard_size=3)  # 6 shards of at most 3
    key = lambda im: torch.tensor(float(im.getpixel((0, 0))[1] * 1000 + im.getpixel((1, 1))[1]))  # noqa: E731
    seen = []
    for rank in range(2):
        loader = build_loader(ShardDataset(ShardSpec(str(shards), "val"), key), 3, False, 2, rank=rank, world=2)
        seen += [v for b in loader for v in b[0].tolist()]
    assert len(seen) == 16 and len(set(seen)) == 16
    ds = ShardDataset(ShardSpec(f"{shards}/{{split}}-{{000000..000005}}.tar", "train"), key, seed=3)
    loader = build_loader(ds, 2, True, 2, rank=1, world=2, grad_accum=2)
    assert steps_per_epoch(loader) == 4  # 8 samples of rank 1: 2 optimiser steps of 2 x 2
    set_loader_epoch(loader, 1)
    epoch = [b[0].tolist() for b in loader]
    assert len(epoch) == 4 and all(len(b) == 2 for b in epoch)
    set_loader_epoch(loader, 1, start=4)  # resumed after one optimiser step (2 batches of 2)
    assert [b[0].tolist() for b in loader] == epoch[2:]
    set_loader_epoch(loader, 2)
    assert [b[0].tolist() for b in loader] != epoch  # a new order each epoch


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def test_bad_shards_are_named(tmp_path):
    """A sample that is not an image is skipped, counted and listed; a truncated shard and a pattern matching
    nothing each stop with one message naming them."""
    data, shards = _shards(tmp_path)
    _tar(shards / "train-000004.tar", [("00000100.jpg", b"not an image"), ("00000100.cls", b"1")])
    common = [*TINY, "--epochs", "1", "--batch-size", "4", "--repeated-aug", "1", "--mixup", "0", "--cutmix", "0",
              "--workers", "0"]
    out = cli("train", *common, "--data", f"wds:{shards}/{{split}}-*.tar",  # train: 5 shards, val: 4
                 "--output", tmp_path / "run")
    assert "1 unreadable images skipped" in out.stdout
    listed = (tmp_path / "run" / "unreadable.txt").read_text().splitlines()
    assert listed == [f"{shards}/train-000004.tar/00000100"]

    whole = (shards / "train-000001.tar").read_bytes()
    (shards / "train-000001.tar").write_bytes(whole[: len(whole) // 2])
    proc = cli("train", *common, "--data", f"wds:{shards}", "--output", tmp_path / "r2", check=False)
    assert proc.returncode == 2 and "train-000001.tar" in proc.stderr and "truncated" in proc.stderr
    assert "Traceback" not in proc.stderr
    # without recorded sizes (shards of other tools), the truncation shows while training, in a loader worker
    info = json.loads((shards / "_info.json").read_text())
    del info["splits"]["train"]["shard_bytes"]
    (shards / "_info.json").write_text(json.dumps(info))
    proc = cli("train", *common, "--workers", "1", "--data", f"wds:{shards}", "--output", tmp_path / "r4",
                  check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "locvit train: error: shard " in proc.stderr.strip().splitlines()[-1]  # after the progress bar
    assert "train-000001.tar cannot be read to its end" in proc.stderr
    os.remove(shards / "_info.json")  # without counts, the shards are read through before training
    proc = cli("train", *common, "--data", f"wds:{shards}/{{split}}-{{000000..000003}}.tar",
                  "--output", tmp_path / "r3", check=False)
    assert proc.returncode == 2 and "train-000001.tar cannot be read to its end" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli("eval", "--model", "localvit_tiny", "--data", f"wds:{tmp_path}/nothing-*.tar", check=False)
    assert proc.returncode == 2 and "matches no shard" in proc.stderr


def test_shards_without_webdataset_name_the_extra(monkeypatch, tmp_path):
    from locvit.data.datasets import build_dataset

    monkeypatch.setitem(sys.modules, "webdataset", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"pip install 'locvit\[data\]'"):
        build_dataset(f"wds:{tmp_path}/train-{{0..3}}.tar", "train")


# --- logging ------------------------------------------------------------------------------------------------------
def test_tensorboard_files_open_and_wandb_is_optional(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    args = [a for a in TINY if a != "--no-tensorboard"]
    cli("train", *args, "--data", "digits", "--epochs", "1", "--batch-size", "64", "--mixup", "0", "--cutmix",
           "0", "--workers", "0", "--repeated-aug", "1", "--log", "tensorboard", "--log-interval", "5", "--output", run)
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"epoch/train_loss", "epoch/top1", "epoch/lr", "epoch/images_per_s", "train/train_loss", "train/lr",
            "train/images_per_s"} <= tags
    assert [e.step for e in acc.Scalars("train/lr")] == [5, 10, 15, 20, 22]
    assert (run / "metrics.csv").is_file()

    try:
        import wandb  # noqa: F401
    except ImportError:
        proc = cli("train", *args, "--data", "digits", "--log", "wandb", "--output", tmp_path / "w", check=False)
        assert proc.returncode == 2 and "pip install wandb" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("train", *TINY, "--data", "digits", "--log", "tensorboard", "--output", tmp_path / "c",
                  check=False)  # TINY says --no-tensorboard
    assert proc.returncode == 2 and "contradicts --no-tensorboard" in proc.stderr


# --- two nodes on one machine -------------------------------------------------------------------------------------
MULTI = [*TINY, "--data", "digits", "--epochs", "1", "--batch-size", "16", "--mixup", "0", "--cutmix", "0",
         "--repeated-aug", "1", "--workers", "0", "--checkpoint-interval", "10"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*launch, out, resume=False, command=("train", *MULTI), **popen):
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "locvit", *map(str, command),
           "--output", str(out), *(["--resume"] if resume else [])]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            start_new_session=True, **popen)


def _nodes(out, resume=False, **kw):
    """Two torchrun agents, one process each, meeting at a c10d rendezvous on 127.0.0.1."""
    port = _port()
    return [_torchrun("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                      f"127.0.0.1:{port}", "--rdzv-id", f"run{port}", "--node-rank", str(r),
                      "--rdzv-conf", "join_timeout=60", out=out, resume=resume, **kw) for r in range(2)]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (torchrun starts each rank in a session of its own)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _kill_second_node(procs, run):
    """SIGKILL the rank that the second "node" runs, once a checkpoint exists: its agent and the other node then
    stop on their own (the launch has no restarts)."""
    deadline = time.time() + 120
    while not (run / "last.pth").exists() and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    ranks = _children(procs[1].pid)
    assert ranks, "the second node's rank did not start"
    for pid in ranks:
        os.kill(pid, signal.SIGKILL)
    try:
        for p in procs:
            p.wait(timeout=90)
    except subprocess.TimeoutExpired:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
        raise
    assert all(p.returncode != 0 for p in procs)
    return torch.load(run / "last.pth", weights_only=True)


def _finish(procs, timeout=120):
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            raise
    for p, text in zip(procs, outs):
        assert p.returncode == 0, text[-3000:]


def _metrics(run):
    lines = (Path(run) / "metrics.csv").read_text().splitlines()
    head = lines[0].split(",")
    return [{k: v for k, v in zip(head, ln.split(",")) if k not in ("images_per_s", "epoch_time_s")}
            for ln in lines[1:]]


@pytest.fixture(scope="module")
def one_node(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_node") / "run"
    _finish([_torchrun("--nproc-per-node", "2", "--master-port", str(_port()), out=out)])
    return out


def test_two_nodes_give_the_one_node_metrics(one_node, tmp_path):
    _finish(_nodes(tmp_path / "two"))
    assert _metrics(tmp_path / "two") == _metrics(one_node) and len(_metrics(one_node)) == 1
    a, b = weights(one_node), weights(tmp_path / "two")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_nodes_resume_after_a_rank_is_killed(one_node, tmp_path):
    run = tmp_path / "two"
    state = _kill_second_node(_nodes(run), run)
    assert 0 < state["global_step"] < 44 and not (run / "model.safetensors").exists()
    _finish(_nodes(run, resume=True))
    assert _metrics(run) == _metrics(one_node)


def test_dense_loop_on_two_nodes_resumes_to_the_one_node_metrics(seg_data, tmp_path):  # noqa: F811
    """`locvit segment train` on two torchrun "nodes", the second killed after the first checkpoint, resumed on
    two nodes: the metrics and weights of the uninterrupted run on one node with two processes."""
    seg = [*SEG, "--data", seg_data, "--batch-size", "1", "--iters", "6", "--eval-interval", "3",
           "--checkpoint-interval", "1"]
    _finish([_torchrun("--nproc-per-node", "2", "--master-port", str(_port()), out=tmp_path / "one", command=seg)])
    run = tmp_path / "two"
    state = _kill_second_node(_nodes(run, command=seg), run)
    assert 0 < state["global_step"] < 6 and not (run / "model.safetensors").exists()
    _finish(_nodes(run, resume=True, command=seg))
    assert _metrics(run) == _metrics(tmp_path / "one") and len(_metrics(run)) == 2
    a, b = weights(tmp_path / "one"), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_unreachable_rendezvous_stops_with_one_message(tmp_path):
    """No peer at MASTER_ADDR:MASTER_PORT: the process waits --dist-timeout seconds, then says what it could not
    reach and what to check (torchrun's own wait is bounded by --rdzv-conf join_timeout)."""
    env = dict(ENV, RANK="1", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_port()))
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "locvit", "train", *MULTI, "--dist-timeout", "3", "--output",
                           tmp_path / "r"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "could not meet the others at 127.0.0.1:" in err[0] and "within 3 s" in err[0], err
    assert time.time() - t0 < 90
    assert not (tmp_path / "r").exists()

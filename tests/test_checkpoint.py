"""Reading, converting and loading checkpoints: the formats the authors released, ours, and broken files."""
import argparse
import os
import subprocess
import sys

import pytest
import timm
import torch

import locvit
from locvit.weights.checkpoint import CheckpointError, read_checkpoint, save_checkpoint

NAME = "localvit_tiny"
KW = dict(depth=2, embed_dim=32, num_heads=2, num_classes=5, img_size=64, reduction=4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return locvit.create_model(NAME, **KW).eval()


def _fresh():
    return locvit.create_model(NAME, **KW).eval()


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("wrap", ["raw", "model", "state_dict", "module_prefix"])
def test_wrapped_official_files_load(tmp_path, model, wrap):
    sd = model.state_dict()
    obj = {"raw": sd, "model": {"model": sd, "epoch": 3, "args": argparse.Namespace(lr=1e-3)},
           "state_dict": {"state_dict": sd}, "module_prefix": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    other = _fresh()
    report = locvit.load_checkpoint(other, path)
    assert report.exact and len(report.loaded) == len(sd)
    assert _same(model, other)


def test_safetensors_roundtrip(tmp_path, model):
    path = save_checkpoint(model, tmp_path / "w.safetensors")
    other = _fresh()
    locvit.load_checkpoint(other, path)
    assert _same(model, other)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x), other(x), rtol=0, atol=0)


class _Config:  # stands for a pickled training config such as Focal's yacs CfgNode
    def __init__(self):
        self.lr = 1.0


def test_pickled_objects_refused_unless_trusted(tmp_path, model):
    path = tmp_path / "focal_like.pth"
    torch.save({"model": model.state_dict(), "config": _Config()}, path)
    with pytest.raises(CheckpointError, match="trust_pickle=True") as e:
        read_checkpoint(path)
    assert "_Config" in str(e.value)
    sd = read_checkpoint(path, trust_pickle=True)
    assert set(sd) == set(model.state_dict())


def test_truncated_file_is_a_clear_error(tmp_path, model):
    path = tmp_path / "cut.pth"
    torch.save(model.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        locvit.load_checkpoint(_fresh(), path)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="safetensors"):
        read_checkpoint(bad)


def test_wrong_model_names_every_problem(model):
    other = locvit.create_model(NAME, **dict(KW, depth=3, embed_dim=48))
    with pytest.raises(CheckpointError) as e:
        locvit.load_checkpoint(other, model.state_dict())
    msg = str(e.value)
    assert "missing keys" in msg and "blocks.2." in msg
    assert "shape mismatches" in msg and "cls_token" in msg
    # nothing was loaded on failure
    before = {k: v.clone() for k, v in other.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_non_strict_reports_head_reinit(model):
    other = locvit.create_model(NAME, **dict(KW, num_classes=9))
    report = locvit.load_checkpoint(other, model.state_dict(), strict=False)
    assert {k for k, _, _ in report.mismatched} == {"head.weight", "head.bias"}
    assert "newly initialised" in str(report) or "skipped" in str(report)
    assert torch.equal(other.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)


def test_pretrained_file_through_timm(tmp_path, model):
    path = tmp_path / "official.pth"
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(model=NAME)}, path)
    built = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **KW)
    assert _same(model, built)
    # a new head for fine-tuning: backbone loaded, head newly initialised
    tuned = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              **dict(KW, num_classes=3))
    assert torch.equal(tuned.pos_embed, model.pos_embed) and tuned.head.out_features == 3
    with pytest.raises(ValueError, match="no official weights are published"):
        timm.create_model("localvit_tiny_mlp6_relu6", pretrained=True, **KW)


def test_pretrained_into_features_only(tmp_path, model):
    path = save_checkpoint(model, tmp_path / "w.safetensors")
    feats = timm.create_model(NAME, pretrained=True, features_only=True, out_indices=(0, 1),
                              pretrained_cfg_overlay=dict(file=str(path)), **KW)
    assert torch.equal(feats.model.pos_embed, model.pos_embed)


def test_from_official_rejects_unknown_class():
    with pytest.raises(ValueError, match="no locvit translation"):
        locvit.from_official("nope.Model", {})


def test_atomic_save_survives_kill(tmp_path):
    """A process killed while writing leaves the previous checkpoint intact and no stray temp file behind
    that could be mistaken for it."""
    path = tmp_path / "last.pth"
    save_checkpoint({"step": torch.tensor(1)}, path)
    script = (
        "import os, signal, torch\n"
        "from locvit.weights.checkpoint import save_checkpoint\n"
        "class Boom:\n"
        "    def __reduce__(self):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        f"save_checkpoint({{'step': torch.tensor(2), 'x': Boom()}}, {str(path)!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode != 0
    assert torch.load(path, weights_only=True)["step"].item() == 1
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["last.pth"]


def test_save_refuses_nothing_silently(tmp_path):
    path = tmp_path / "sub" / "w.pth"
    save_checkpoint({"a": torch.ones(2)}, path)
    assert os.path.exists(path) and torch.load(path, weights_only=True)["a"].sum() == 2


@pytest.mark.parametrize("content", ["random", "random_pickle", "html", "text"])
def test_broken_files_are_called_broken_not_unsafe(tmp_path, content):
    """Only a file that really pickles objects gets the --trust-checkpoint refusal; garbage is named as garbage."""
    data = {"random": os.urandom(5000), "random_pickle": b"\x80\x02" + os.urandom(5000),
            "html": b"<!DOCTYPE html><html><body>Sign in to OneDrive</body></html>" * 20,
            "text": b"hello world " * 100}[content]
    path = tmp_path / "w.pth"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    msg = str(e.value)
    assert "trust" not in msg and "pickles" not in msg
    assert ("web page" if content == "html" else "not a valid PyTorch checkpoint") in msg


def test_nonfinite_weights_are_refused_and_eval_fails(tmp_path, model):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["head.weight"][0, 0] = float("nan")
    sd["blocks.0.attn.qkv.weight"][1] = float("inf")
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="NaN/inf values in 2 tensors .*head.weight"):
        locvit.load_checkpoint(_fresh(), path)
    locvit.load_checkpoint(_fresh(), path, allow_nonfinite=True)  # on request
    kw = ["depth=2", "embed_dim=32", "num_heads=2", "reduction=4"]
    proc = subprocess.run([sys.executable, "-m", "locvit", "eval", "--model", NAME, "--checkpoint", str(path),
                           "--data", "digits", "--img-size", "64", "--model-kwargs", *kw],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "NaN/inf" in proc.stderr and "Traceback" not in proc.stderr


def test_create_model_builds_at_the_size_and_head_of_a_checkpoint(tmp_path, model):
    """One function builds and loads (CLI eval/export/viz and the dense adapters use it): the classifier size comes
    from the checkpoint, the input size from the caller, and the report stays on the model."""
    path = tmp_path / "w.safetensors"
    save_checkpoint(model, path)
    kw = {k: v for k, v in KW.items() if k not in ("num_classes", "img_size")}
    m = locvit.create_model(NAME, checkpoint=path, img_size=64, **kw).eval()
    assert m.num_classes == 5 and m.load_report.exact and _same(m, model)
    assert m.pos_embed.shape == model.pos_embed.shape

"""pretrained=True end to end: release-format files served by an HTTP server on the loopback interface (started and
stopped by the tests), torch hub's cache and the Hugging Face cache in a temporary folder, `locvit convert`,
`local-dir:` / `hf-hub:` names, and the paths that ride on it (smp encoders, torchvision detectors, fine-tuning)."""
from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import json
import threading
from pathlib import Path

import pytest
import timm
import torch

import locvit
from conftest import REPO, conformance_dir
from locvit.hub import convert, push_to_hub
from locvit.official import official_model_args
from locvit.weights.checkpoint import CheckpointError
from locvit.weights.pretrained import DownloadError, WeightsUnavailableError

# a tiny LocalViT whose official checkpoint keys are ours: weights for every test that needs no official logits
NAME = "localvit_tiny"
KW = dict(depth=2, embed_dim=32, num_heads=2, num_classes=5, img_size=32, reduction=4)


class _Server(http.server.ThreadingHTTPServer):
    """Serves ``files`` (path -> bytes) like a release host, and hub-style repositories like the Hugging Face hub
    (``/<org>/<name>/resolve/<rev>/<file>`` with the commit and ETag headers huggingface_hub reads)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []
        self.thread = threading.Thread(target=self.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{path.lstrip('/')}"

    def stop(self) -> None:
        if self.thread.is_alive():
            self.shutdown()
            self.server_close()
            self.thread.join()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def _send(self, head_only: bool) -> None:
        path = self.path.split("?")[0]
        if path.count("/resolve/") == 1:  # hub: /<org>/<name>/resolve/<rev>/<file> -> /<org>/<name>/<file>
            repo, rest = path.split("/resolve/")
            path = f"{repo}/{rest.split('/', 1)[1]}"
        body = self.server.files.get(path)
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.server.hits.append(path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server's names)
        self._send(head_only=False)

    def do_HEAD(self):  # noqa: N802
        self._send(head_only=True)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    srv = _Server()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def caches(tmp_path, monkeypatch):
    """torch hub's and Hugging Face's caches in a temporary folder."""
    import huggingface_hub.constants as hf

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torch.hub.get_dir() reads it at every call
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # read from HF_HOME at import time
    return tmp_path / "torch" / "hub" / "checkpoints"


def _release(sd: dict, **extra) -> bytes:
    """A state dict wrapped as the authors' DeiT-style training scripts saved it."""
    buf = io.BytesIO()
    torch.save({"model": sd, "epoch": 299, "args": argparse.Namespace(model="released", lr=5e-4), **extra}, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = locvit.create_model(NAME, **KW).eval()
    return model, _release(model.state_dict())


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _vectors() -> list[Path]:
    """The smallest conformance vector of each family: the repository's own set, else the full one."""
    for root in (REPO / "tests" / "conformance" / "vectors", conformance_dir() / "vectors"):
        fams = sorted(d for d in root.glob("*") if d.is_dir()) if root.is_dir() else []
        if fams:
            return [min(d.glob("*.pt"), key=lambda p: p.stat().st_size) for d in fams if any(d.glob("*.pt"))]
    return []


@pytest.mark.parametrize("path", _vectors() or [None], ids=lambda p: p.parent.name if p else "none")
def test_download_gives_the_official_logits(server, caches, path):
    if path is None:
        pytest.skip("no conformance vectors (tests/conformance/vectors or LOCVIT_CONFORMANCE_DIR)")
    v = torch.load(path, weights_only=True)
    name, kw = official_model_args(v["official_class"], v["constructor_kwargs"])
    if name.startswith("t2t_"):  # pretrained=True would apply the T2T releases' legacy qk_scale
        kw["legacy_qk_scale"] = False
    if v["official_class"].startswith("focal"):  # Swin-style: model, optimizer, scheduler state, config
        body = _release(v["state_dict"], max_accuracy=82.2, config={"MODEL": {"NAME": "focal"}})
    else:
        body = _release(v["state_dict"])
    server.files["/weights-v0.1/release.pth"] = body
    url = server.url("weights-v0.1/release.pth")
    overlay = dict(url=url, num_classes=kw.get("num_classes", 1000))
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kw).eval()
    with torch.no_grad():
        err = (model(v["input"]) - v["logits"]).abs().max().item()
    assert err <= 1e-4, f"max |logit diff| {err:.3e}"
    cached = caches / "release.pth"
    assert model.load_report.exact and model.load_report.source == str(cached)
    digest = hashlib.sha256(body).hexdigest()
    assert model.load_report.sha256 == digest == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert sorted(p.name for p in caches.iterdir()) == ["release.pth"]  # no temporary file left behind

    server.stop()  # the second load comes from the cache
    again = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kw)
    assert _same(model, again) and server.hits == ["/weights-v0.1/release.pth"]


def test_truncated_download_leaves_no_cache_and_a_good_file_then_loads(server, caches, tiny, capsys):
    model, body = tiny
    server.files["/v1.0.0/localvit_t.pth"] = body[: len(body) // 2]
    overlay = dict(url=server.url("v1.0.0/localvit_t.pth"))
    with pytest.raises(CheckpointError, match="not a complete checkpoint.*nothing was cached"):
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=overlay, **KW)
    assert not caches.exists() or not any(caches.iterdir())
    server.files["/v1.0.0/localvit_t.pth"] = body
    assert _same(model, timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=overlay, **KW))

    # a cache file that no longer reads (e.g. cut by another tool) is removed, said so, and fetched again
    (caches / "localvit_t.pth").write_bytes(body[:1000])
    capsys.readouterr()
    assert _same(model, timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=overlay, **KW))
    assert "removed the cached" in capsys.readouterr().err
    assert server.hits.count("/v1.0.0/localvit_t.pth") == 3  # the cut file, the good one, the fetch after removal


def test_offline_with_an_empty_cache_names_the_url_and_file(server):
    url = server.url("v1.0.0/localvit_t.pth")
    server.stop()
    with pytest.raises(DownloadError) as e:
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(url=url), **KW)
    assert url in str(e.value) and "file=" in str(e.value) and "nothing was cached" in str(e.value)


def test_a_web_page_is_not_cached(server, caches):
    server.files["/share/weights"] = b"<!DOCTYPE html><html><body>Sign in to OneDrive</body></html>" * 4
    with pytest.raises(CheckpointError, match="web page.*nothing was cached"):
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(url=server.url("share/weights")), **KW)
    assert not caches.exists() or not any(caches.iterdir())


def test_no_direct_link_names_where_to_get_the_file():
    with pytest.raises(WeightsUnavailableError) as e:
        timm.create_model("vvt_tiny", pretrained=True)
    assert "1drv.ms" in str(e.value) and "file=" in str(e.value) and "local-dir:" in str(e.value)
    with pytest.raises(WeightsUnavailableError) as e:
        timm.create_model("focal_tiny", pretrained=True)
    assert "projects4jw.blob.core.windows.net" in str(e.value) and "Focal-Transformer#8" in str(e.value)
    with pytest.raises(WeightsUnavailableError, match="no official weights are published"):
        timm.create_model("vvt_test", pretrained=True)
    # the published direct links are what pretrained=True fetches
    cfg = timm.models.get_pretrained_cfg("regionvit_small")
    assert cfg.url == "https://github.com/IBM/RegionViT/releases/download/weights-v0.1/RegionViT-S.pth"
    assert cfg.origin_url.endswith("/releases/tag/weights-v0.1")


def test_strict_for_every_source(server, tiny):
    model, body = tiny
    server.files["/x/other.pth"] = _release(locvit.create_model(NAME, **dict(KW, depth=3, embed_dim=48)).state_dict())
    with pytest.raises(CheckpointError, match="does not fit localvit_tiny") as e:
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(url=server.url("x/other.pth")), **KW)
    assert "blocks.0.attn.qkv.weight" in str(e.value)
    # the class count is the weights': the same count as the cfg's (1000) must load the head
    server.files["/x/good.pth"] = body
    url = server.url("x/good.pth")
    with pytest.raises(CheckpointError, match="num_classes=5"):
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(url=url), **dict(KW, num_classes=1000))
    # another class count gets a new classifier, everything else loaded
    tuned = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(url=url), **dict(KW, num_classes=3))
    assert tuned.head.out_features == 3 and torch.equal(tuned.pos_embed, model.pos_embed)
    assert {k for k, _, _ in tuned.load_report.mismatched} == {"head.weight", "head.bias"}
    # features_only drops the pruned layers' keys; a grey-scale stem is adapted as timm does
    feats = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(url=url), features_only=True,
                              out_indices=(0,), **KW)
    assert torch.equal(feats.model.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    grey = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(url=url), in_chans=1, **KW)
    torch.testing.assert_close(grey.patch_embed.proj.weight, model.patch_embed.proj.weight.sum(1, keepdim=True))



def test_file_overrides_the_url_and_is_hashed(tmp_path, tiny):
    model, body = tiny
    path = tmp_path / "mine.pth"
    path.write_bytes(body)
    overlay = dict(file=str(path), url="http://127.0.0.1:9/never-fetched.pth")  # timm's order: file first
    built = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=overlay, **KW)
    assert _same(built, model) and built.load_report.sha256 == hashlib.sha256(body).hexdigest()
    assert "sha256" in str(built.load_report)


def test_convert_then_local_dir_and_hub(server, tmp_path, tiny, monkeypatch):
    model, body = tiny
    ckpt = tmp_path / "localvit_t.pth"
    ckpt.write_bytes(body)
    out = tmp_path / "localvit_tiny.in1k"
    from locvit.cli import main

    assert main(["convert", "--model", "localvit_tiny_mlp4_act3_r192", "--checkpoint", str(ckpt), "--output", str(out),
                 "--model-kwargs", *[f"{k}={v}" for k, v in KW.items()]]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == NAME and config["num_classes"] == 5 and "trust_pickle" not in config["model_args"]
    card = (out / "README.md").read_text()
    assert "arxiv.org/abs/2104.05707" in card and "license: mit" in card and "74.84" in card
    assert "max |Δlogit|" in card and "**0.00e+00**" in card and hashlib.sha256(body).hexdigest() in card
    x = torch.randn(2, 3, 32, 32)
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert loaded.load_report.exact
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert _same(locvit.create_model(f"local-dir:{out}", pretrained=True), model)
    with pytest.raises(ValueError, match="not an empty folder"):
        convert(NAME, ckpt, out, model_kwargs=KW)

    # the same folder on a hub (the loopback server speaks the hub's file protocol) loads as hf-hub:ORG/NAME
    import huggingface_hub.constants as hf

    for f in out.iterdir():
        server.files[f"/locvit-test/localvit_tiny.in1k/{f.name}"] = f.read_bytes()
    monkeypatch.setattr(hf, "ENDPOINT", server.url("").rstrip("/"))
    monkeypatch.setattr(hf, "HUGGINGFACE_CO_URL_TEMPLATE", hf.ENDPOINT + "/{repo_id}/resolve/{revision}/{filename}")
    hubbed = timm.create_model("hf-hub:locvit-test/localvit_tiny.in1k", pretrained=True).eval()
    assert _same(hubbed, model) and hubbed.load_report.source.endswith("model.safetensors")
    assert hubbed.load_report.source.startswith(str(tmp_path / "hf" / "hub"))
    # a cfg's hf_hub_id comes before its url (timm's order): the url here is never fetched
    overlay = dict(hf_hub_id="locvit-test/localvit_tiny.in1k", url=server.url("nowhere.pth"))
    assert _same(timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=overlay, **KW), model)
    assert "/nowhere.pth" not in server.hits

    # --push-to-hub: everything up to the upload (the hub client is replaced by a recorder)
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create_repo", repo_id, private, exist_ok))
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ValueError, match="Hugging Face token"):
        push_to_hub(out, "locvit-test/localvit_tiny.in1k")
    url = push_to_hub(out, "locvit-test/localvit_tiny.in1k", token="hf_test")
    assert url.endswith("locvit-test/localvit_tiny.in1k")
    assert calls == [("token", "hf_test"), ("create_repo", "locvit-test/localvit_tiny.in1k", False, True),
                     ("upload_folder", "locvit-test/localvit_tiny.in1k", ["README.md", "config.json",
                                                                          "model.safetensors"])]
    assert "'hf-hub:locvit-test/localvit_tiny.in1k'" in (out / "README.md").read_text()


PYRAMID = "regionvit_tiny"
PYRAMID_KW = dict(embed_dim=(16, 16, 32, 32), depth=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4, img_size=64)


@pytest.fixture(scope="module")
def pyramid():
    torch.manual_seed(0)
    model = locvit.create_model(PYRAMID, **PYRAMID_KW).eval()
    return model, _release(model.state_dict())


def test_smp_encoder_weights_download(server):
    smp = pytest.importorskip("segmentation_models_pytorch")
    name, kw = "vvt_tiny", dict(embed_dims=(8, 16, 16, 32), num_heads=(1, 2, 2, 4), depths=(1, 1, 1, 1))
    torch.manual_seed(0)
    model = locvit.create_model(name, **kw)
    body = _release(model.state_dict())
    server.files["/vvt/vvt_tiny.pth"] = body
    overlay = dict(url=server.url("vvt/vvt_tiny.pth"))
    # smp passes encoder_weights to timm as pretrained=True for its tu- encoders; extra kwargs reach timm
    seg = smp.create_model("FPN", encoder_name=f"tu-{name}", encoder_weights=True, classes=2,
                           pretrained_cfg_overlay=overlay, **kw)
    assert _same(seg.encoder.model.model.stages[0], model.stages[0])
    assert seg.encoder.model.load_report.sha256 == hashlib.sha256(body).hexdigest()
    from locvit import dense

    seg2 = dense.smp_model("FPN", name, 2, pretrained=True, pretrained_cfg_overlay=overlay, verbose=False, **kw)
    assert _same(seg2.model.encoder.model.model.stages[3], model.stages[3])
    assert server.hits == ["/vvt/vvt_tiny.pth"]  # the second model came from the cache


def test_mask_rcnn_pretrained_backbone(server, pyramid):
    model, body = pyramid
    server.files["/weights-v0.1/RegionViT-Ti.pth"] = body
    overlay = dict(url=server.url("weights-v0.1/RegionViT-Ti.pth"))
    from locvit import dense

    det = dense.mask_rcnn(PYRAMID, 3, pretrained=True, out_channels=16, verbose=False, min_size=64, max_size=64,
                          model_kwargs=dict(pretrained_cfg_overlay=overlay, **PYRAMID_KW))
    body_model = det.backbone.body.model
    assert body_model.det_norm  # the family's dense recipe, its detection norms left new by the filter
    assert torch.equal(body_model.stages[1].blocks[0].attn.qkv.weight, model.stages[1].blocks[0].attn.qkv.weight)
    report = det.backbone.load_report
    assert not report.missing and not report.mismatched and report.sha256
    assert {k.split(".")[0] for k in report.unexpected} == {"head", "norm"}  # pruned by features_only
    with pytest.raises(ValueError, match="not both"):
        dense.create_backbone(PYRAMID, pretrained=True, checkpoint="x.pth", **PYRAMID_KW)


def test_train_pretrained_fine_tunes_from_the_download(server, tmp_path, tiny, capsys):
    model, body = tiny
    server.files["/v1.0.0/localvit_t.pth"] = body
    from locvit.cli import main

    kw = [f"{k}={v}" for k, v in KW.items() if k not in ("num_classes", "img_size")]
    overlay = "pretrained_cfg_overlay={url: " + server.url("v1.0.0/localvit_t.pth") + "}"
    assert main(["train", "--model", NAME, "--pretrained", "--data", "digits", "--img-size", "32", "--epochs", "1",
                 "--warmup-epochs", "0", "--max-steps", "1", "--batch-size", "8", "--workers", "0",
                 "--output", str(tmp_path / "run"),
                 "--no-tensorboard", "--model-kwargs", overlay, *kw]) == 0
    assert server.hits == ["/v1.0.0/localvit_t.pth"]
    report = capsys.readouterr().out
    assert "loaded 62 tensors" in report and "head.weight (5, 32)->(10, 32)" in report  # new head, backbone loaded
    out = locvit.read_checkpoint(tmp_path / "run" / "model.safetensors")
    assert out["head.weight"].shape == (10, 32)
    assert main(["train", "--model", NAME, "--pretrained", "--checkpoint", "x.pth", "--max-steps", "1",
                 "--output", str(tmp_path / "both"), *["--model-kwargs", *kw]]) == 2
    assert "not both" in capsys.readouterr().err


# --- what a refused download leaves behind, servers that never answer, advice that works ------------------------------
def _nan_copy(sd: dict) -> dict:
    sd = {k: v.clone() for k, v in sd.items()}
    sd["head.weight"][0, 0] = float("nan")
    return sd


def test_a_refused_download_never_enters_the_cache(server, caches, tiny):
    """Files that download completely and read, but are refused for the model (another model's weights under the
    expected name, NaN weights), are discarded; the correct file at the same URL then loads."""
    model, body = tiny
    url = server.url("v1.0.0/localvit_t.pth")
    server.files["/v1.0.0/localvit_t.pth"] = _release(locvit.create_model(NAME, **dict(KW, embed_dim=48)).state_dict())
    with pytest.raises(CheckpointError, match="does not fit localvit_tiny") as e:
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(url=url), **KW)
    assert url in str(e.value) and "nothing was cached" in str(e.value) and "<state dict>" not in str(e.value)
    assert not caches.exists() or not any(caches.iterdir())

    server.files["/v1.0.0/localvit_t.pth"] = _release(_nan_copy(model.state_dict()))
    with pytest.raises(CheckpointError, match="NaN/inf") as e:
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(url=url), **KW)
    msg = str(e.value)
    # the advice is the one a pretrained=True user can follow: allow_nonfinite is no argument of timm.create_model
    assert url in msg and "nothing was cached" in msg and "allow_nonfinite" not in msg and "file=" in msg
    assert not any(caches.iterdir())

    server.files["/v1.0.0/localvit_t.pth"] = body
    assert _same(model, timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(url=url), **KW))
    assert sorted(p.name for p in caches.iterdir()) == ["localvit_t.pth"]


@pytest.mark.parametrize("poison", ["another model", "nan"])
def test_a_poisoned_cache_is_removed_named_and_fetched_again(server, caches, tiny, capsys, poison):
    """A cached file that reads but fails the checks (left by an older version, copied in by hand) no longer blocks
    every later load: it is removed, the message names it and the URL, and the URL is fetched once."""
    model, body = tiny
    url = server.url("v1.0.0/localvit_t.pth")
    server.files["/v1.0.0/localvit_t.pth"] = body
    caches.mkdir(parents=True)
    bad = (locvit.create_model(NAME, **dict(KW, depth=3)).state_dict() if poison == "another model"
           else _nan_copy(model.state_dict()))
    (caches / "localvit_t.pth").write_bytes(_release(bad))
    capsys.readouterr()
    assert _same(model, timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(url=url), **KW))
    err = capsys.readouterr().err
    assert f"removed the cached copy {caches / 'localvit_t.pth'} of {url}" in err
    assert server.hits == ["/v1.0.0/localvit_t.pth"]
    assert (caches / "localvit_t.pth").read_bytes() == body

    # the fetch is tried once: a URL that serves the wrong file again is an error, and the cache stays empty
    (caches / "localvit_t.pth").write_bytes(_release(bad))
    server.files["/v1.0.0/localvit_t.pth"] = _release(bad)
    with pytest.raises(CheckpointError, match="nothing was cached"):
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(url=url), **KW)
    assert server.hits == ["/v1.0.0/localvit_t.pth"] * 2 and not any(caches.iterdir())


@pytest.fixture()
def silent_server():
    """A server that accepts connections and never answers (``mode='silent'``), or answers the headers and then
    stalls in the body (``mode='stall'``)."""
    import socket

    state = dict(mode="silent", conns=[])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()

    def serve():
        sock.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            state["conns"].append(conn)
            if state["mode"] == "stall":
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/weights.pth"
    yield state
    stop.set()
    thread.join()
    for c in state["conns"]:
        c.close()
    sock.close()


@pytest.mark.parametrize("mode", ["silent", "stall"])
def test_a_server_that_never_answers_times_out(silent_server, caches, monkeypatch, mode):
    import time

    silent_server["mode"] = mode
    monkeypatch.setenv("LOCVIT_DOWNLOAD_TIMEOUT", "0.5")
    start = time.monotonic()
    with pytest.raises(DownloadError) as e:
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(url=silent_server["url"]), **KW)
    assert time.monotonic() - start < 20  # bounded: one timeout, no endless retries
    msg = str(e.value)
    assert silent_server["url"] in msg and "did not answer within 0.5 s" in msg and "LOCVIT_DOWNLOAD_TIMEOUT=" in msg
    assert "nothing was cached" in msg and (not caches.exists() or not any(caches.iterdir()))


def test_download_timeout_setting_is_checked(monkeypatch):
    from locvit.weights.pretrained import DEFAULT_DOWNLOAD_TIMEOUT, download_timeout

    monkeypatch.delenv("LOCVIT_DOWNLOAD_TIMEOUT", raising=False)
    assert download_timeout() == DEFAULT_DOWNLOAD_TIMEOUT
    monkeypatch.setenv("LOCVIT_DOWNLOAD_TIMEOUT", "300")
    assert download_timeout() == 300
    for bad in ("soon", "0", "-5"):
        monkeypatch.setenv("LOCVIT_DOWNLOAD_TIMEOUT", bad)
        with pytest.raises(ValueError, match="LOCVIT_DOWNLOAD_TIMEOUT=.*seconds > 0"):
            download_timeout()


def test_nan_checkpoint_advice_works_when_followed(tmp_path, tiny):
    model, _ = tiny
    path = tmp_path / "diverged.pth"
    torch.save(_nan_copy(model.state_dict()), path)
    with pytest.raises(CheckpointError, match="allow_nonfinite=True") as e:
        locvit.create_model(NAME, checkpoint=path, **KW)
    assert str(path) in str(e.value) and "<state dict>" not in str(e.value)
    loaded = locvit.create_model(NAME, checkpoint=path, allow_nonfinite=True, **KW)  # the advice, followed
    assert torch.isnan(loaded.head.weight[0, 0])


def test_another_models_file_gets_no_class_count_advice(server, tiny):
    """Both classifiers have 1000 outputs (another model's weights, another width): advising num_classes=1000 to a
    model that has 1000 classes would be wrong advice."""
    kw = dict(KW, num_classes=1000)
    server.files["/x/wide.pth"] = _release(locvit.create_model(NAME, **dict(kw, embed_dim=48)).state_dict())
    with pytest.raises(CheckpointError, match="does not fit") as e:
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(url=server.url("x/wide.pth")), **kw)
    assert "num_classes=" not in str(e.value)


def test_a_hub_folder_whose_config_is_not_json_is_named(tmp_path, tiny):
    folder = tmp_path / "hubdir"
    folder.mkdir()
    (folder / "config.json").write_text('{"architecture": "localvit_tiny",')
    from safetensors.torch import save_file

    save_file(tiny[0].state_dict(), folder / "model.safetensors")
    with pytest.raises(ValueError) as e:
        locvit.create_model(f"local-dir:{folder}", pretrained=True)
    assert str(folder / "config.json") in str(e.value) and "not valid JSON" in str(e.value)

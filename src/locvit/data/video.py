"""Clip datasets for action recognition: class folders of video files (decoded with PyAV) or of frame folders, and
an embedded generated dataset whose classes only motion tells apart.

* Temporal sampling (:func:`sample_indices`): ``'uniform'`` splits the video into ``T`` equal segments and takes one
  frame of each (TSN/TSM, the usual choice for Something-Something); ``'dense'`` takes ``T`` frames ``stride``
  apart from one window (I3D/SlowFast/TimeSformer on Kinetics). Training draws the frame of each segment, or the
  window's start, at random; testing takes ``num_clips`` evenly spread clips. Videos shorter than a dense window
  repeat their last frame (SlowFast clamps the indices the same way), or raise with ``short='error'``.
* Spatial augmentation is timm's (``create_transform``): :class:`ClipTransform` replays the random state for every
  frame of a clip, so one crop, flip, RandAugment policy and erased patch apply to all of its frames.
* Multi-view testing: ``num_clips`` temporal clips x ``crops`` spatial crops (1: centre; 3: both ends and the
  centre of the longer side, after the short side is resized) come back as a ``V x C x T x H x W`` tensor per video
  (``locvit.engine.video.MultiViewModel`` averages the scores over the views).

Every sample is ``(clip, target)``; a file that cannot be decoded gives an ``Unreadable`` record naming it and why,
and the loader skips and counts it, as it does unreadable images.
"""
from __future__ import annotations

import os
import random
import re
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from locvit.data.datasets import IMAGE_EXTENSIONS, SeededDataset, split_folder

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif", ".flv", ".wmv")
SAMPLINGS = ("uniform", "dense")
EMBEDDED_VIDEO = ("motion",)


class VideoDecodeError(ValueError):
    """A video file or frame folder could not be read, or holds too few frames."""


# --- temporal sampling ---------------------------------------------------------------------------------------------
def sample_indices(num_total: int, num_frames: int, sampling: str = "uniform", stride: int = 1,
                   clip: int = 0, num_clips: int = 1, rng: random.Random | None = None) -> list[int]:
    """Frame indices of one clip of ``num_frames`` from a video of ``num_total`` frames.

    Args:
        num_total: frames in the video (at least 1).
        num_frames: frames per clip ``T``.
        sampling: ``'uniform'`` (one frame per equal segment) or ``'dense'`` (``T`` frames ``stride`` apart).
        stride: frame step of dense sampling.
        clip, num_clips: which of ``num_clips`` evenly spread test clips (ignored when ``rng`` is given).
        rng: training: draw the frame in each segment (uniform) or the window's start (dense) from it.

    Indices beyond the video (dense windows longer than the video) are clamped to its last frame.
    """
    if num_total < 1:
        raise VideoDecodeError("the video has no frames")
    if sampling == "uniform":
        seg = num_total / num_frames
        if rng is not None:
            return [min(num_total - 1, int(seg * t + rng.random() * seg)) for t in range(num_frames)]
        # test clip k of K: the frame at (k + 0.5) / K of each segment (K = 1: its middle)
        return [min(num_total - 1, int(seg * (t + (clip + 0.5) / num_clips))) for t in range(num_frames)]
    if sampling == "dense":
        span = (num_frames - 1) * stride + 1
        room = max(0, num_total - span)
        if rng is not None:
            start = rng.randint(0, room)
        else:
            start = round(room * clip / (num_clips - 1)) if num_clips > 1 else room // 2
        return [min(num_total - 1, start + t * stride) for t in range(num_frames)]
    raise ValueError(f"frame sampling must be one of {SAMPLINGS}, got {sampling!r}")


# --- decoding ------------------------------------------------------------------------------------------------------
def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of a frame folder in natural order (``img_2`` before ``img_10``)."""
    return sorted((p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                  key=lambda p: _natural(p.name))


def read_video(path: str | os.PathLike, select: Callable[[int], Sequence[Sequence[int]]]) -> list[list[Image.Image]]:
    """Decode the frames ``select(num_frames)`` asks for (a list of clips of indices) from a video file (PyAV).

    Frames are decoded in order up to the last one needed and only the needed ones are converted to RGB. When the
    container's frame count is wrong (it is an estimate in some formats), the clips are drawn again from the true
    count.
    """
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            declared = int(stream.frames)
            if declared > 0:
                clips = select(declared)
                wanted = {i for c in clips for i in c}
                last, got = max(wanted), {}
                n = 0
                for n, frame in enumerate(container.decode(stream), 1):
                    if n - 1 in wanted:
                        got[n - 1] = frame.to_image()
                    if n - 1 == last:
                        return [[got[i] for i in c] for c in clips]
                frames = None  # fewer frames than declared: draw again from the true count below
            else:
                frames = [frame.to_image() for frame in container.decode(stream)]
        if frames is None:
            frames = _decode_all(path)
    except av.error.FFmpegError as e:
        raise VideoDecodeError(f"cannot decode {path}: {e}") from None
    if not frames:
        raise VideoDecodeError(f"{path} holds no decodable frame")
    return [[frames[i] for i in c] for c in select(len(frames))]


def _decode_all(path: str | os.PathLike) -> list[Image.Image]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_image() for frame in container.decode(container.streams.video[0])]


def read_frame_folder(folder: str | os.PathLike, select: Callable[[int], Sequence[Sequence[int]]]
                      ) -> list[list[Image.Image]]:
    """The frames ``select(num_frames)`` asks for from a folder of frame images."""
    files = frame_files(folder)
    if not files:
        raise VideoDecodeError(f"frame folder {folder} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
    clips = select(len(files))
    cache: dict[int, Image.Image] = {}
    for i in {i for c in clips for i in c}:
        with Image.open(files[i]) as im:
            cache[i] = im.convert("RGB")
    return [[cache[i] for i in c] for c in clips]


def find_clips(root: str | os.PathLike, class_to_idx: dict[str, int] | None = None
               ) -> tuple[list[tuple[Path, int]], dict[str, int]]:
    """``root/<class>/<clip>``: a clip is a video file or a folder of frame images. Classes sort naturally."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"clip folder {root} does not exist")
    classes = sorted((p.name for p in root.iterdir() if p.is_dir()), key=_natural)
    if class_to_idx is None:
        class_to_idx = {c: i for i, c in enumerate(classes)}
    samples = []
    for c in classes:
        if c not in class_to_idx:
            continue
        for p in sorted((root / c).iterdir(), key=lambda q: _natural(q.name)):
            if (p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS) or (p.is_dir() and frame_files(p)):
                samples.append((p, class_to_idx[c]))
    if not samples:
        raise ValueError(f"{root} holds no clips: expected class sub-folders of video files "
                         f"({', '.join(VIDEO_EXTENSIONS[:5])}, ...) or of frame folders "
                         "(root/<class>/<clip>/<frame>.jpg)")
    return samples, class_to_idx


# --- datasets ------------------------------------------------------------------------------------------------------
class ClipDataset(SeededDataset):
    """Base of the clip datasets: ``load`` returns the sampled clips (lists of PIL frames) of one video; the
    transform (a :class:`ClipTransform`) turns them into ``C x T x H x W`` (one view) or ``V x C x T x H x W``.

    Args:
        num_frames: frames per clip ``T``.
        sampling: ``'uniform'`` or ``'dense'`` (see :func:`sample_indices`).
        frame_stride: frame step of dense sampling.
        training: draw the temporal sampling at random (from ``(seed, epoch, index)``, so resuming reproduces it);
            otherwise take ``num_clips`` evenly spread clips.
        num_clips: temporal clips per video when testing.
        short: a video shorter than a dense window: ``'repeat'`` its last frame, or ``'error'``.
    """

    def __init__(self, num_frames: int = 8, sampling: str = "uniform", frame_stride: int = 4, training: bool = True,
                 num_clips: int = 1, short: str = "repeat", transform: Callable | None = None, seed: int = 0):
        super().__init__(transform, seed)
        if num_frames < 1 or frame_stride < 1 or num_clips < 1:
            raise ValueError(f"num_frames, frame_stride and num_clips must be positive, got {num_frames}, "
                             f"{frame_stride}, {num_clips}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"frame sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if short not in ("repeat", "error"):
            raise ValueError(f"short must be 'repeat' or 'error', got {short!r}")
        self.num_frames, self.sampling, self.frame_stride = num_frames, sampling, frame_stride
        self.training, self.num_clips, self.short = training, 1 if training else num_clips, short

    def clip_indices(self, num_total: int, index: int, source: Any = "clip") -> list[list[int]]:
        """The frame indices of this sample's clips in a video of ``num_total`` frames."""
        need = self.num_frames if self.sampling == "uniform" else (self.num_frames - 1) * self.frame_stride + 1
        if self.short == "error" and num_total < need:
            raise VideoDecodeError(
                f"{source} has {num_total} frames; a {self.sampling} clip of {self.num_frames} frames"
                + (f" every {self.frame_stride}" if self.sampling == "dense" else "")
                + f" needs {need} (lower num_frames/frame_stride, or let short clips repeat their last frame)")
        if self.training:
            rng = random.Random(zlib.crc32(f"{self.seed}/{self.epoch}/{index}/time".encode()))
            return [sample_indices(num_total, self.num_frames, self.sampling, self.frame_stride, rng=rng)]
        return [sample_indices(num_total, self.num_frames, self.sampling, self.frame_stride, k, self.num_clips)
                for k in range(self.num_clips)]


class VideoFolderDataset(ClipDataset):
    """Class sub-folders of clips, ``root/<class>/<clip>``: video files (any container/codec FFmpeg decodes, via
    PyAV) or folders of frame images (``root/<class>/<clip>/00001.jpg``...). See :class:`ClipDataset` for the
    sampling arguments."""

    def __init__(self, root: str | os.PathLike, class_to_idx: dict[str, int] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.root = Path(root)
        self.samples, self.class_to_idx = find_clips(self.root, class_to_idx)
        self.classes = sorted(self.class_to_idx, key=self.class_to_idx.get)
        if any(p.is_file() for p, _ in self.samples):
            _require_av()

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[list[list[Image.Image]], int]:
        path, target = self.samples[index]
        return read_clips(self, path, index), target

    def target(self, index: int) -> int:
        return self.samples[index][1]

    def describe(self, index: int) -> str:
        return str(self.samples[index][0])


def read_clips(dataset: ClipDataset, path: Path, index: int) -> list[list[Image.Image]]:
    """The clips ``dataset``'s sampling takes from the video file or frame folder ``path`` (sample ``index``)."""

    def select(n: int) -> list[list[int]]:
        return dataset.clip_indices(n, index, path)

    return read_frame_folder(path, select) if path.is_dir() else read_video(path, select)


def is_clip(path: str | os.PathLike) -> bool:
    """A video file (by its extension) or a folder holding frame images."""
    p = Path(path)
    return (p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS) or (p.is_dir() and bool(frame_files(p)))


class VideoFileList(ClipDataset):
    """Clips given one by one (``locvit predict --task video``): video files or frame folders, the target of each
    its index in ``paths``; decoding and sampling as :class:`VideoFolderDataset` (a file that does not decode gives
    an ``Unreadable`` record naming it)."""

    def __init__(self, paths: Sequence[str | os.PathLike], **kwargs: Any):
        kwargs.setdefault("training", False)
        super().__init__(**kwargs)
        self.samples = [Path(p) for p in paths]
        self.classes = []
        if any(p.is_file() for p in self.samples):
            _require_av()

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[list[list[Image.Image]], int]:
        return read_clips(self, self.samples[index], index), index

    def target(self, index: int) -> int:
        return index

    def describe(self, index: int) -> str:
        return str(self.samples[index])


def middle_frame(path: str | os.PathLike) -> Image.Image:
    """The middle frame of a video file or frame folder (the picture ``locvit predict --task video`` draws on)."""
    def select(n: int) -> list[list[int]]:
        return [[n // 2]]

    p = Path(path)
    return (read_frame_folder(p, select) if p.is_dir() else read_video(p, select))[0][0]


class MotionClips(ClipDataset):
    """Generated clips whose class only motion carries: a shape crossing a noisy background to the left (class 0)
    or to the right (class 1).

    The clip's middle position is drawn uniformly, so the frames of a right-moving clip are those of a left-moving
    clip played backwards: every single frame, and the set of frames, is equally likely under both classes. A model
    that treats frames as an unordered set (the frame-averaged image model) is at chance; telling the classes apart
    needs the order of the frames. Deterministic per ``(split, index)``.

    Args:
        split: ``'train'`` (1,024 clips) or ``'val'`` (256).
        size: frame side in pixels.
        clip_frames: frames generated per clip (the sampling then takes ``num_frames`` of them).
    """

    classes = ["left", "right"]

    def __init__(self, split: str = "train", size: int = 32, clip_frames: int = 8, length: int | None = None,
                 **kwargs: Any):
        kwargs.setdefault("num_frames", clip_frames)
        super().__init__(**kwargs)
        self.split, self.size, self.clip_frames = split, size, clip_frames
        self.n = length or (1024 if split == "train" else 256)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return self.n

    def target(self, index: int) -> int:
        return index % 2

    def frames(self, index: int) -> np.ndarray:
        """``clip_frames x size x size x 3`` uint8 frames of clip ``index``."""
        rng = np.random.default_rng([zlib.crc32(self.split.encode()), index])
        S, T = self.size, self.clip_frames
        side = int(rng.integers(max(3, S // 8), max(4, S // 4) + 1))
        speed = float(rng.uniform(0.05, 0.08)) * S  # pixels per frame
        span = speed * (T - 1)
        lo, hi = side / 2 + 1, S - side / 2 - 1
        mid_x = rng.uniform(lo + span / 2, hi - span / 2) if hi - lo > span else (lo + hi) / 2
        mid_y = rng.uniform(lo, hi)
        direction = 1.0 if self.target(index) == 1 else -1.0
        color = rng.integers(128, 256, size=3)
        disk = bool(rng.integers(0, 2))
        yy, xx = np.mgrid[0:S, 0:S] + 0.5
        cx = mid_x + direction * speed * (np.arange(T) - (T - 1) / 2)
        dx, dy = xx[None] - cx[:, None, None], (yy - mid_y)[None]  # T x S x S
        r = side / 2
        inside = (dx ** 2 + dy ** 2 <= r ** 2) if disk else ((np.abs(dx) <= r) & (np.abs(dy) <= r))
        background = rng.normal(64, 20, size=(T, S, S, 3))
        return np.clip(np.where(inside[..., None], color, background), 0, 255).astype(np.uint8)

    def load(self, index: int) -> tuple[list[list[Image.Image]], int]:
        frames = self.frames(index)
        clips = self.clip_indices(len(frames), index, f"motion clip {index}")
        return [[Image.fromarray(frames[i]) for i in c] for c in clips], self.target(index)


def build_video_dataset(data: str, split: str, transform: Callable | None = None, seed: int = 0,
                        class_to_idx: dict[str, int] | None = None, **kwargs: Any) -> ClipDataset:
    """A clip dataset from ``data``: ``'motion'`` (embedded, generated) or a folder (``train/`` and ``val/`` inside,
    or class folders). ``kwargs`` are :class:`ClipDataset`'s sampling arguments; training sampling is random
    for the train split."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    kwargs.setdefault("training", split == "train")
    name = data.partition(":")[0]
    if name in EMBEDDED_VIDEO:
        return MotionClips(split, transform=transform, seed=seed, **kwargs)
    return VideoFolderDataset(split_folder(data, split), class_to_idx, transform=transform, seed=seed, **kwargs)


def _require_av() -> None:
    try:
        import av  # noqa: F401
    except ImportError:
        raise ValueError("reading video files needs PyAV: pip install 'locvit[video]' (or use frame folders)") from None


# --- transforms ----------------------------------------------------------------------------------------------------
class ClipTransform:
    """Apply per-frame transforms to clips with the same random draws for every frame of a clip.

    ``views`` are frame transforms (timm's ``create_transform`` output): each clip is transformed by each view,
    replaying the random state (python, numpy, torch) captured at the call for every frame. Returns
    ``C x T x H x W`` for one clip and one view, else ``(clips * views) x C x T x H x W`` (clip-major).
    """

    def __init__(self, *views: Callable[[Image.Image], Tensor]):
        if not views:
            raise ValueError("ClipTransform needs at least one frame transform")
        self.views = views

    def __call__(self, clips: list[list[Image.Image]]) -> Tensor:
        state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        out = []
        for clip in clips:
            for view in self.views:
                frames = []
                for frame in clip:
                    random.setstate(state[0])
                    np.random.set_state(state[1])
                    torch.set_rng_state(state[2])
                    frames.append(view(frame))
                out.append(torch.stack(frames, dim=1))
        return out[0] if len(out) == 1 else torch.stack(out)

    def __repr__(self) -> str:
        return f"ClipTransform({', '.join(repr(v) for v in self.views)})"


class EdgeCrop(nn.Module):
    """Crop ``size`` at a fractional position: 0 = top-left, 0.5 = centre, 1 = bottom-right (after a short-side
    resize only the longer side moves: the three-crop test of the video papers)."""

    def __init__(self, size: int | Sequence[int], position: float):
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.position = position

    def forward(self, img: Image.Image) -> Image.Image:
        from torchvision.transforms import functional as TF

        w, h = img.size
        ch, cw = self.size
        if h < ch or w < cw:
            img = TF.center_crop(img, [max(h, ch), max(w, cw)])  # pads, as CenterCrop does
            w, h = img.size
        return TF.crop(img, round((h - ch) * self.position), round((w - cw) * self.position), ch, cw)


def clip_train_transform(frame_transform: Callable[[Image.Image], Tensor]) -> ClipTransform:
    """A training frame transform (timm's, with its augmentation) applied identically to every frame."""
    return ClipTransform(frame_transform)


def clip_eval_transform(frame_transform: Any, crops: int = 1) -> ClipTransform:
    """Test views from timm's eval frame transform (resize, centre crop, tensor, normalise): ``crops=1`` keeps it;
    ``crops>1`` replaces its centre crop by ``crops`` crops spread from one end of the longer side to the other."""
    if crops == 1:
        return ClipTransform(frame_transform)
    from torchvision.transforms import CenterCrop, Compose

    steps = list(getattr(frame_transform, "transforms", ()))
    at = next((i for i, s in enumerate(steps) if isinstance(s, CenterCrop)), None)
    if crops < 1 or at is None:
        raise ValueError(f"{crops} test crops need a positive count and an eval transform with a centre crop")
    views = [Compose(steps[:at] + [EdgeCrop(steps[at].size, k / (crops - 1))] + steps[at + 1:]) for k in range(crops)]
    return ClipTransform(*views)


__all__ = ["ClipDataset", "ClipTransform", "EdgeCrop", "MotionClips", "VideoDecodeError", "VideoFolderDataset",
           "build_video_dataset", "clip_eval_transform", "clip_train_transform", "find_clips", "frame_files",
           "read_frame_folder", "read_video", "sample_indices"]

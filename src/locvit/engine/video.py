"""What the training loop and evaluation need for clips (``--task video``): the task names, mixing clips, and
multi-view testing (scores averaged over temporal clips x spatial crops, as the video papers report top-1/top-5).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

TASKS = ("classify", "video")


def check_task(task: str) -> bool:
    """Validate a task name; True for ``'video'``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return task == "video"


def video_data_kwargs(num_frames: int, frame_sampling: str, frame_stride: int, test_clips: int = 1
                      ) -> dict[str, Any]:
    """The clip datasets' sampling arguments from the config's/CLI's names."""
    return dict(num_frames=num_frames, sampling=frame_sampling, frame_stride=frame_stride, num_clips=test_clips)


def mix_batch(mixup: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], x: Tensor, targets: Tensor
              ) -> tuple[Tensor, Tensor]:
    """timm's ``Mixup``/CutMix on an image batch, or on ``B x C x T x H x W`` clips with one mixing weight and one
    CutMix box for every frame (timm draws its box on the last two axes, so the frames are folded into the
    channels)."""
    if x.ndim != 5:
        return mixup(x, targets)
    B, C, T, H, W = x.shape
    mixed, targets = mixup(x.reshape(B, C * T, H, W), targets)
    return mixed.view(B, C, T, H, W), targets


class MultiViewModel(nn.Module):
    """Score ``B x V x C x T x H x W`` test views of each video with a clip model and average the softmax scores
    over the views; returns their log, which top-k and cross-entropy read as logits. Other inputs pass through.

    Views go through the model ``chunk`` at a time (default: the number of videos in the batch), so memory stays
    that of one batch of clips.
    """

    def __init__(self, model: nn.Module, chunk: int | None = None):
        super().__init__()
        self.model = model
        self.chunk = chunk

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 6:
            return self.model(x)
        B, V = x.shape[:2]
        views = x.flatten(0, 1)
        probs = torch.cat([self.model(part).float().softmax(-1) for part in views.split(self.chunk or B)])
        return probs.view(B, V, -1).mean(1).clamp_min(torch.finfo(torch.float32).tiny).log()

"""The recipes shipped for issue 19: VVT's CIFAR-100 recipe and the video recipes resolve as documented."""
import pytest

from locvit.engine.config import build_config


def test_vvt_cifar100_is_the_imagenet_recipe_on_cifar100():
    cfg = build_config("vvt_cifar100")
    imagenet = build_config("vvt_tiny_in1k", dict(data="/data/imagenet"))
    assert cfg.model == "vvt_tiny" and cfg.data == "cifar100:data" and cfg.output == "runs/vvt_cifar100"
    same = ("epochs", "blr", "scale_lr", "warmup_epochs", "min_lr", "opt", "weight_decay", "drop_path", "smoothing",
            "mixup", "cutmix", "aa", "reprob", "repeated_aug", "seed", "batch_size", "img_size")
    assert {k: getattr(cfg, k) for k in same} == {k: getattr(imagenet, k) for k in same}
    assert (cfg.epochs, cfg.blr, cfg.drop_path, cfg.seed, cfg.img_size) == (300, 5e-4, 0.1, 3407, None)
    assert build_config("vvt_cifar100", dict(data="cifar100:/data/cifar")).data == "cifar100:/data/cifar"


@pytest.mark.parametrize("name, sampling, hflip", [
    ("regionvit_video_k400", "dense", 0.5), ("regionvit_video_ssv2", "uniform", 0.0),
    ("regionvit_video_motion", "uniform", 0.0), ("regionvit_video_motion_baseline", "uniform", 0.0),
])
def test_video_recipes(name, sampling, hflip):
    cfg = build_config(name, dict(data="/data/clips") if name.endswith(("k400", "ssv2")) else None)
    assert cfg.task == "video" and cfg.frame_sampling == sampling and cfg.hflip == hflip and cfg.num_frames == 8
    assert cfg.model.startswith("regionvit_video_")
    if name.startswith("regionvit_video_motion"):
        assert cfg.data == "motion" and cfg.model_kwargs.get("temporal", True) == (name == "regionvit_video_motion")


def test_video_settings_are_validated():
    with pytest.raises(ValueError, match="--task"):
        build_config(None, dict(task="detect"))
    with pytest.raises(ValueError, match="--frame-sampling"):
        build_config("regionvit_video_motion", dict(frame_sampling="random"))
    with pytest.raises(ValueError, match="--num-frames"):
        build_config("regionvit_video_motion", dict(num_frames=0))

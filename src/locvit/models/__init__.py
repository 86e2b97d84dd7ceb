"""The model zoo: importing this package registers every family with timm."""
from locvit.models import (  # noqa: F401
    deit,
    focal,
    focal_v2,
    localvit,
    localvit_hosts,
    localvit_swin,
    pvt,
    regionvit,
    regionvit_video,
    t2t,
    tnt,
    vvt,
)

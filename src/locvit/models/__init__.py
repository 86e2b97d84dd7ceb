"""The model zoo: importing this package registers every family with timm."""
from locvit.models import deit, localvit, t2t, tnt  # noqa: F401
from locvit.models import pvt  # noqa: F401
from locvit.models import regionvit  # noqa: F401
from locvit.models import vvt  # noqa: F401
from locvit.models import focal, focal_v2  # noqa: F401
from locvit.models import localvit_swin  # noqa: F401

"""The model zoo: importing this package registers every family with timm."""
from locvit.models import deit, localvit  # noqa: F401

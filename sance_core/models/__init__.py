"""Network definitions: the SANCE model and its heads (the ASPP head is shared with DeepLab)."""

from sance_core.models.heads import ASPP, ContourHead
from sance_core.models.sance import SanceModel, build_sance_model

__all__ = ["ASPP", "ContourHead", "SanceModel", "build_sance_model"]

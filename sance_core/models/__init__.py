"""Every network of the pipeline: ResNet backbones, the CAM classifier, the SANCE model (contour and
segmentation branches), DeepLab-v2, their heads (ASPP shared by SANCE and DeepLab), and ONNX export."""

from sance_core.models.heads import ASPP, ContourHead
from sance_core.models.sance import SanceModel, build_sance_model

__all__ = ["ASPP", "ContourHead", "SanceModel", "build_sance_model"]

"""Constants every part of the pipeline agrees on; defined here once and imported everywhere else."""

from __future__ import annotations

IGNORE_INDEX = 255
"""Label value that losses and metrics skip: VOC's boundary band, an unsure seed, an unlabelled pixel."""

MAP_STRIDE = 4
"""Stride of the low-resolution grid of CAMs, seeds, contour and segmentation maps (paper §4.2)."""

SANCE_MODES = ("irnet", "sance_naive", "sance")
"""The three trainings of the SANCE model (paper Table 1): baseline, without and with label refinement."""

FULLY_SUPERVISED = "fully_supervised"
"""The DeepLab run on ground-truth masks instead of pseudo labels (the upper bound row)."""

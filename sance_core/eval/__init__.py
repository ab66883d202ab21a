"""Measuring results: split-wide confusion matrices (mIoU, seed precision/coverage), CAM / seed /
segmentation evaluation, and the BSDS-style contour benchmark (ODS, OIS, AP)."""

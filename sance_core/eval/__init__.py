"""Measuring results: split-wide confusion matrices (mIoU, seed precision/coverage), CAM / seed /
segmentation evaluation, the classifier's image-level scores (mAP on a split it did not train on),
and the BSDS-style contour benchmark (ODS, OIS, AP)."""

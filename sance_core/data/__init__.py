"""Datasets: the PASCAL-VOC-layout description and manifest, readers of real annotation formats
(VOC XML, SBD, tags CSV, COCO), the embedded demo data, validation, shards and augmentation."""

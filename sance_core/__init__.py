"""SANCE: segmentation-assisted noiseless contour exploration for weakly supervised segmentation.

The package holds all logic of the pipeline; the Snakemake workflow only calls it.
Importing it has no side effects (no logging set-up, no device probing).
"""

__version__ = "0.1.0"

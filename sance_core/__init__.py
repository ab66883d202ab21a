"""SANCE: segmentation-assisted noiseless contour exploration for weakly supervised segmentation.

The package holds all logic of the pipeline; the Snakemake workflow only calls it.
``stages/`` orchestrates (one entry per rule), ``ops/``, ``models/``, ``engine/``, ``data/``,
``eval/`` and ``io/`` are the library; docs/ARCHITECTURE.md maps rules to code.
Importing it has no side effects (no logging set-up, no device probing).
"""

__version__ = "0.1.0"

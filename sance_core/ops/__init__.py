"""Operators of the method, independent of any stage: affinities (Eq. 2-3), propagation (Eq. 6),
online labels (Eq. 7-8), the paste augmentation, the dense CRF, the losses (Eq. 4-5) and
multi-scale test-time inference."""

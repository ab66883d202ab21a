"""Training plumbing shared by the classifier, SANCE and DeepLab."""

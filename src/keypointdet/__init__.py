"""keypointdet: CenterNet and CornerNet on one shared backbone (PyTorch Lightning + Hydra)."""

import os

# albumentations checks PyPI for a newer release on import; runs must not touch the network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

"""detcli: config-driven object detection training in plain PyTorch."""

__version__ = "0.1.0"

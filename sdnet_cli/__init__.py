"""sdnet-cli: robustness of sparse-coding networks (SDNet) and ResNet baselines."""

__version__ = "0.1.0"

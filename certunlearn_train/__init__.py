"""certunlearn_train: certified unlearning of PyTorch models (training, data, CLI, certificates).

Importing this package is cheap: submodules that need torch are imported on first use.
"""
__version__ = "0.2.0"

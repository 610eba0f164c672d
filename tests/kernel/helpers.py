"""Fixtures for the noisy-step op tests: devices and input factories."""
import pytest
import torch

CUDA = torch.cuda.is_available()

#: Devices every op test runs on; CUDA is skipped (not silently passed) without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA device"))]


def sample_inputs(B, d, *, device="cpu", seed=0, scale=1.0, x_scale=1.0):
    """Random float32 (params, grads) with a fixed torch seed."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(d, generator=gen) * x_scale).to(device)
    G = (torch.randn(B, d, generator=gen) * scale).to(device)
    return x, G

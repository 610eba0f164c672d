"""Training tests use tiny models: one intra-op thread is faster than two and does not fight the
second pytest-xdist worker for the cores."""
import torch

torch.set_num_threads(1)

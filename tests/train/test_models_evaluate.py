"""Models: vmap-compatible forward, refusal of what the certificate cannot cover. Evaluation:
accuracy and the MIA AUC against independent computations."""
import numpy as np
import pytest
import torch
from torch import nn
from hypothesis import given, strategies as st
from sklearn.metrics import roc_auc_score

from certunlearn_train import models as M
from certunlearn_train import evaluate as E
from certunlearn_train._flat import FlatParameters, PerSampleGradients


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_per_sample_gradients_match_loop(name):
    torch.manual_seed(0)
    model = M.build_model(name, (1, 8, 8), 10)
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
    M.check_unlearnable(model)
    expected = []
    for i in range(5):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        expected.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    flat = FlatParameters(model)
    rows = torch.empty(5, flat.numel)
    PerSampleGradients(model, flat, nn.functional.cross_entropy).fill(rows, x, y)
    torch.testing.assert_close(rows, torch.stack(expected), rtol=1e-5, atol=1e-6)


def test_cnn_rejects_non_square_input():
    with pytest.raises(M.UnsupportedModelError, match=r"square image inputs .* got input shape"):
        M.build_model("cnn", (1, 8, 6), 10)
    with pytest.raises(M.UnsupportedModelError, match="unknown model 'resnet'"):
        M.build_model("resnet", (1, 8, 8), 10)


@pytest.mark.parametrize("module, message", [
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), r"1 \(BatchNorm2d\) keeps running"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval(), "BatchNorm2d"),
    (nn.Sequential(nn.Linear(2, 2), nn.InstanceNorm1d(2, track_running_stats=True)),
     "InstanceNorm1d"),
    (nn.Linear(2, 2).double(), "parameters must be float32, found torch.float64"),
    (nn.ReLU(), "no parameters"),
])
def test_unsupported_models_are_refused(module, message):
    with pytest.raises(M.UnsupportedModelError, match=message):
        M.check_unlearnable(module)


def test_foreign_float_buffer_is_refused_and_norm_layers_without_stats_pass():
    model = nn.Linear(2, 2)
    model.register_buffer("calibration", torch.ones(2))
    with pytest.raises(M.UnsupportedModelError, match="buffer calibration"):
        M.check_unlearnable(model)
    M.check_unlearnable(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)))
    M.check_unlearnable(nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4)))


def test_accuracy_known_answer():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))  # predicts the larger coordinate
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 0, 0, 1])
    assert E.accuracy(model, x, y) == 0.75
    losses = E.per_sample_losses(model, x, y)
    # independent float64 log-softmax
    logits = x.double().numpy()
    ref = np.log(np.exp(logits).sum(1)) - logits[np.arange(4), y.numpy()]
    np.testing.assert_allclose(losses, ref, rtol=1e-6)


@given(st.lists(st.integers(0, 5), min_size=1, max_size=30),
       st.lists(st.integers(0, 5), min_size=1, max_size=30))
def test_auc_matches_sklearn_with_ties(pos, neg):
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    assert E.auc(pos, neg) == pytest.approx(roc_auc_score(labels, np.r_[pos, neg]), abs=1e-12)


def test_auc_rejects_empty_sets():
    with pytest.raises(ValueError, match="non-empty"):
        E.auc([], [1.0])


def test_mia_auc_detects_memorisation_direction():
    # members get low loss, non-members high loss -> AUC 1; swapped -> 0
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(10 * torch.eye(2))
    xm = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); ym = torch.tensor([0, 1])
    xn = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); yn = torch.tensor([1, 0])
    assert E.mia_auc(model, xm, ym, xn, yn) == 1.0
    assert E.mia_auc(model, xn, yn, xm, ym) == 0.0


def test_evaluation_with_another_loss():
    """Regression: per-sample MSE in float64 against numpy, mean losses, no accuracy for float
    targets; the MIA AUC scores with the given loss."""
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    y = torch.tensor([[0.909], [-1.0], [0.0]])
    losses = E.per_sample_losses(model, x, y, nn.functional.mse_loss)
    np.testing.assert_allclose(losses, [(1 - 0.909) ** 2, 0.0, 1.0], rtol=1e-6)
    r = E.evaluate_model(model, retain=(x, y), forget=(x[:1], y[:1]), test=(x[1:], y[1:]),
                         loss_fn=nn.functional.mse_loss)
    assert "retain_acc" not in r
    assert r["retain_loss"] == pytest.approx(np.mean(losses))
    # member loss 0.008 is below one non-member (1.0) and above the other (0.0)
    assert r["mia_auc"] == 0.5


def test_batchnorm_without_running_stats_and_changing_buffers_are_refused():
    bn = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, track_running_stats=False)).eval()
    with pytest.raises(M.UnsupportedModelError, match="BatchNorm1d.*mixes the samples"):
        M.check_unlearnable(bn)

    class Seen(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.register_buffer("n", torch.zeros((), dtype=torch.int64))

        def forward(self, x):
            self.n += 1
            return self.lin(x)

    model = Seen()
    M.check_unlearnable(model)  # an integer buffer is fine as such
    with pytest.raises(M.UnsupportedModelError, match=r"buffer\(s\) n change"):
        M.check_buffers_constant(model, torch.zeros(3, 2), torch.zeros(3))
    assert int(model.n) == 0 and model.training  # put back

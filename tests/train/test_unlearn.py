"""unlearn() end to end: reference loop, certificate numbers, tampering, bad input, usefulness."""
import copy
import json
import math

import pytest
import torch

import certunlearn_theory as ct
from certunlearn_train import certificates as C
from certunlearn_train.data import load_dataset, select_forget, split_forget
from certunlearn_train.evaluate import evaluate_model
from certunlearn_train.models import MLP
from certunlearn_train.ops import gaussian_noise
from certunlearn_train.train import train
from certunlearn_train.unlearn import batch_generator_seed, unlearn

from .helpers import flat_params, tiny_problem
from .test_noisy_phase import reference

EPS, DELTA = 1.0, 1e-5


# ----------------------------------------------------------------------------------------------
# The whole procedure against the reference, and the certificate against the accountant
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["gradient_clipping", "model_clipping"])
def test_unlearn_equals_clip_then_reference_steps(method):
    model, x, y = tiny_problem()
    kw = dict(C0=0.5, lr=0.1, steps=5, batch_size=8, clip="per_sample", seed=1234)
    if method == "gradient_clipping":
        kw.update(C1=0.1)
        radius, C1, sigma0 = math.inf, 0.1, 0.0
    else:
        kw.update(C2=0.6, sigma0=0.01, lam=0.1)
        radius, C1, sigma0 = 0.6, math.inf, 0.01
    out, cert = unlearn(model, (x, y), eps=EPS, delta=DELTA, method=method, progress=False, **kw)
    # reference: clip to C0 (plain ops), optional initial noise at counter 0, then the steps
    start = copy.deepcopy(model)
    flat = flat_params(start).double()
    flat = flat * min(1.0, kw["C0"] / float(flat.norm()))
    d = flat.numel()
    offset = 0
    if sigma0:
        flat = flat + sigma0 * gaussian_noise(d, 1234, 0, dtype=torch.float64)
        offset = math.ceil(d / 2)
    torch.nn.utils.vector_to_parameters(flat.float(), start.parameters())
    # the reference numbers noise blocks from 0: shift by the initial draw
    traj = reference(start, x, y, steps=5, lr=0.1, lam=kw.get("lam", 0.0), clip="per_sample",
                     C1=C1, sigma=cert.sigma, radius=radius, batch_size=8,
                     batch_seed=batch_generator_seed(1234), noise_seed=1234,
                     noise_offset=offset)
    torch.testing.assert_close(flat_params(out), traj[-1], rtol=1e-5, atol=1e-5)
    assert cert.noise_seed_user_supplied and "1234" not in cert.to_json()


@pytest.mark.parametrize("method, extra", [
    ("gradient_clipping", dict(C1=0.05)),
    ("gradient_clipping", dict(C1=0.05, lam=0.5)),
    ("model_clipping", dict(C2=1.0, lam=0.1)),
])
def test_certificate_numbers_recomputed_by_accountant(method, extra):
    model, x, y = tiny_problem()
    out, cert = unlearn(model, (x, y), eps=EPS, delta=DELTA, method=method, C0=0.5, lr=0.1,
                        steps=8, batch_size=8, progress=False, **extra)
    p = cert.parameters
    # the accountant's share of delta and the float32 shift slack (THEORY.md section 8.1)
    if method == "gradient_clipping":
        acct_delta, tail = C.split_tail_delta(DELTA)
        slack = C.float32_shift_slack(sigma=cert.sigma, T=8, d=p["d"], C0=0.5, C1=extra["C1"],
                                      gamma=0.1, lam=extra.get("lam", 0.0), eps=EPS,
                                      delta_tail=tail, batch_size=8)
        assert p["shift_slack"] >= slack and p["float32_tail_delta"] == tail
        assert p["d"] == sum(q.numel() for q in model.parameters())
    else:
        acct_delta, tail = DELTA, 0.0
        assert p["shift_slack"] == 2.0 ** -19 * extra["C2"]
    slack = p["shift_slack"]
    sigma = ct.noise_for(EPS, acct_delta, 8, 0.5, extra.get("C1"), 0.1, extra.get("lam", 0.0),
                         method=method, C2=extra.get("C2"), sigma0=0.0, shift_slack=slack)
    assert cert.sigma == float(sigma)
    eps_back = ct.epsilon_for(cert.sigma, acct_delta, p["T"], p["C0"], p.get("C1"), p["gamma"],
                              p["lam"], method=method, C2=p.get("C2"), sigma0=p["sigma0"],
                              shift_slack=slack)
    assert float(eps_back) <= EPS and cert.epsilon <= EPS
    assert acct_delta + tail <= cert.delta <= DELTA
    assert float(eps_back) > 0.99 * EPS  # calibrated, not merely safe
    fresh = ct.issue_certificate(cert.sigma, acct_delta, 8, 0.5, extra.get("C1"), 0.1,
                                 extra.get("lam", 0.0), method=method, C2=extra.get("C2"),
                                 sigma0=0.0, eps=EPS, shift_slack=slack)
    assert fresh.to_dict() == cert.accountant
    assert cert.retain_size == 24 and cert.model_sha256_after == C.weights_sha256(out)
    assert cert.model_sha256_before == C.weights_sha256(model)
    cert.verify(out)
    C.RunCertificate.from_json(cert.to_json()).verify(out)


# ----------------------------------------------------------------------------------------------
# Tampering
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sound_pair(tmp_path_factory):
    model, x, y = tiny_problem()
    out, cert = unlearn(model, (x, y), eps=EPS, delta=DELTA, C0=0.5, C1=0.05, lr=0.1, steps=6,
                        batch_size=8, progress=False)
    folder = tmp_path_factory.mktemp("pair")
    C.save_model_file(str(folder / "model.pt"), out, {"name": "mlp"})
    cert.save(str(folder / "certificate.json"))
    return folder, out, cert


def _verify_cli(folder, cert_name="certificate.json", model_name="model.pt"):
    from certunlearn_train.cli import main
    return main(["verify", str(folder / cert_name), str(folder / model_name)])


def test_verify_accepts_sound_pair(sound_pair, capsys):
    folder, _, _ = sound_pair
    assert _verify_cli(folder) == 0
    assert "OK" in capsys.readouterr().out


def test_verify_rejects_changed_weights(sound_pair, tmp_path, capsys):
    folder, out, cert = sound_pair
    changed = copy.deepcopy(out)
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    C.save_model_file(str(tmp_path / "model.pt"), changed, {"name": "mlp"})
    cert.save(str(tmp_path / "certificate.json"))
    assert _verify_cli(tmp_path) == 1
    assert "model weights do not match" in capsys.readouterr().err


@pytest.mark.parametrize("path, factor, reason", [
    (("sigma",), 0.8, "cannot reproduce"),              # less noise than the guarantee needs
    (("eps",), 0.5, "cannot reproduce"),            # a stronger claim
    (("delta",), 1e-3, "cannot reproduce"),
    (("parameters", "T"), 0.5, "cannot reproduce|does not match"),
    (("parameters", "C1"), 2.0, "cannot reproduce|does not match"),
    (("parameters", "C0"), 3.0, "cannot reproduce|does not match"),
    (("accountant",), None, "accountant"),              # accountant record swapped for junk
])
def test_verify_rejects_changed_numbers(sound_pair, tmp_path, capsys, path, factor, reason):
    folder, _, _ = sound_pair
    data = json.loads((folder / "certificate.json").read_text())
    node = data
    for key in path[:-1]:
        node = node[key]
    if factor is None:
        node[path[-1]] = {"junk": 1}
    else:
        node[path[-1]] = type(node[path[-1]])(node[path[-1]] * factor) \
            if path[-1] != "T" else int(node[path[-1]] * factor)
    (tmp_path / "certificate.json").write_text(json.dumps(data))
    (tmp_path / "model.pt").write_bytes((folder / "model.pt").read_bytes())
    assert _verify_cli(tmp_path) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and len(err.strip().splitlines()) == 1
    import re
    assert re.search(reason, err), err


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------

BAD = [
    (dict(eps=-1.0), "eps"),
    (dict(eps=float("nan")), "eps"),
    (dict(delta=0.0), "delta"),
    (dict(delta=1.5), "delta"),
    (dict(C0=0.0), r"C0 must be a real number > 0.0, got 0.0"),
    (dict(lr=-0.1), r"lr must be a real number > 0.0, got -0.1"),
    (dict(C1=float("inf")), "C1 must be a real number > 0.0, got inf"),
    (dict(clip="rows"), "clip must be one of per_sample, batch, got 'rows'"),
    (dict(method="magic"), "method must be one of"),
    (dict(steps=0), "steps must be an integer >= 1 and <= 100000000, got 0"),
    (dict(steps=1e30), "steps must be an integer >= 1 and <= 100000000, got 1e"),
    (dict(steps=None, epochs=1e30), "epochs must give at most 1e.08 steps"),
    (dict(steps=None, C1=1e-12), r"default number of steps C0 / \(lr C1\) = 5e\+12 exceeds"),
    (dict(finetune_epochs=1e30), "finetune_epochs must give at most 1e.08 steps"),
    (dict(device="nonsense"), "device must name a torch device"),
    (dict(device="cuda:7"), "device 'cuda:7' does not exist here"),
    (dict(steps=3, epochs=1.0), "give steps or epochs, not both"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(C2=1.0), "C2 and sigma0 belong to model_clipping"),
    (dict(method="model_clipping"), "model_clipping needs the model clipping radius C2"),
]


@pytest.mark.parametrize("change, message", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_parameters_fail_before_work(change, message):
    model, x, y = tiny_problem()
    before = C.weights_sha256(model)
    kw = dict(eps=EPS, delta=DELTA, C0=0.5, C1=0.05, lr=0.1, steps=3, progress=False)
    kw.update(change)
    with pytest.raises(ValueError, match=message):
        unlearn(model, (x, y), **kw)
    assert C.weights_sha256(model) == before


def test_bad_data_and_models():
    model, x, y = tiny_problem()
    kw = dict(eps=EPS, delta=DELTA, C0=0.5, C1=0.05, lr=0.1, steps=3, progress=False)
    with pytest.raises(ValueError, match="retain_data is empty"):
        unlearn(model, (x[:0], y[:0]), **kw)
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.net[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"parameter net.0.weight has NaN or inf"):
        unlearn(bad, (x, y), **kw)
    # a BatchNorm with running statistics is handled (test_buffers.py); one without them
    # always normalises with the batch's statistics, mixing the samples
    bn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4),
                             torch.nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="BatchNorm1d"):
        unlearn(bn, (x, y), **kw)
    with pytest.raises(ValueError, match="a pair"):
        unlearn(model, x, **kw)
    with pytest.raises(ValueError, match="same length"):
        unlearn(model, (x, y[:3]), **kw)
    before = C.weights_sha256(model)
    late_bad_label = y.clone()
    late_bad_label[-1] = 10  # the MLP has 10 outputs; only the last sample is wrong
    for inplace in (False, True):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\).*found 10"):
            unlearn(model, (x, late_bad_label), inplace=inplace, **kw)
        with pytest.raises(ValueError, match=r"cannot run on these inputs of shape \(5,\)"):
            unlearn(model, (torch.rand(len(y), 5), y), inplace=inplace, **kw)
        assert C.weights_sha256(model) == before
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        train(model, (x, late_bad_label), epochs=1, lr=0.1, progress=False)
    assert C.weights_sha256(model) == before


def test_input_model_untouched_unless_inplace():
    model, x, y = tiny_problem()
    before = C.weights_sha256(model)
    params_before = [p for p in model.parameters()]
    kw = dict(eps=EPS, delta=DELTA, C0=0.5, C1=0.05, lr=0.1, steps=3, progress=False)
    out, cert = unlearn(model, (x, y), **kw)
    assert out is not model and C.weights_sha256(model) == before
    assert cert.model_sha256_before == before != cert.model_sha256_after
    out2, cert2 = unlearn(model, (x, y), inplace=True, **kw)
    assert out2 is model and C.weights_sha256(model) == cert2.model_sha256_after != before
    assert all(a is b for a, b in zip(params_before, model.parameters()))  # same Parameters
    assert all(p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# Unlearning helps
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_class_forget():
    torch.manual_seed(0)
    train_set, test_set = load_dataset("digits")
    retain, forget = split_forget(train_set, select_forget(train_set.y, classes=[3]))
    sets = dict(retain=retain.tensors(), forget=forget.tensors(), test=test_set.tensors())
    original = MLP(64, 10, (32,))
    train(original, train_set.tensors(), epochs=15, lr=0.05, seed=0, progress=False)
    return original, sets


def test_unlearning_a_class_matches_retraining(digits_class_forget):
    """Forgetting a whole class makes the effect measurable: the original model classifies the
    class (forget accuracy ~1, MIA AUC ~0.5 since its test images look alike), a retrained model
    never saw it (forget accuracy 0, high loss on it: AUC far below 0.5). Thresholds: the
    unlearned model's test accuracy within 3 points of retraining's (seed-to-seed spread of
    retraining here is about 1 point), its forget accuracy at most 5 points above retraining's,
    and its MIA AUC within 0.1 of retraining's while the original is at least 0.3 away."""
    from certunlearn_train.baselines import retrain
    original, sets = digits_class_forget
    retrained, _ = retrain(original, sets["retain"], epochs=15, lr=0.05, seed=1, progress=False)
    unlearned, cert = unlearn(original, sets["retain"], eps=EPS, delta=DELTA, C0=0.01,
                              C1=0.01 / (0.05 * 30), lr=0.05, steps=30, finetune_epochs=15,
                              seed=2024, progress=False)
    r_o, r_r, r_u = (evaluate_model(m, **sets) for m in (original, retrained, unlearned))
    assert r_o["forget_acc"] > 0.9 and r_r["forget_acc"] < 0.05
    assert r_u["forget_acc"] <= r_r["forget_acc"] + 0.05
    assert abs(r_u["test_acc"] - r_r["test_acc"]) <= 0.03
    assert abs(r_o["mia_auc"] - r_r["mia_auc"]) >= 0.3
    assert abs(r_u["mia_auc"] - r_r["mia_auc"]) <= 0.1
    assert cert.epsilon <= EPS


def test_noisy_phase_alone_forgets(digits_class_forget):
    """Without fine-tuning the noise must wipe the model (eps = 1 with d ~ 2,400 parameters:
    noise per coordinate ~16 C0 against weights of norm <= C0): accuracy near chance (0.1) on
    the test and retain sets. (The forget-set accuracy of a random model is not checked: it
    depends on which class the random model happens to favour.)"""
    original, sets = digits_class_forget
    unlearned, _ = unlearn(original, sets["retain"], eps=EPS, delta=DELTA, C0=0.01,
                           C1=0.01 / (0.05 * 30), lr=0.05, steps=30, seed=2024,
                           progress=False)
    r = evaluate_model(unlearned, **sets)
    assert r["test_acc"] < 0.3 and r["retain_acc"] < 0.3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("clip", ["batch", "per_sample"])
def test_unlearn_on_cuda_matches_cpu(clip):
    model, x, y = tiny_problem()
    kw = dict(eps=EPS, delta=DELTA, C0=0.5, C1=0.05, lr=0.1, steps=6, batch_size=8, clip=clip,
              finetune_epochs=0, seed=77, progress=False)
    out_cpu, cert_cpu = unlearn(model, (x, y), **kw)
    out_gpu, cert_gpu = unlearn(model, (x, y), device="cuda", **kw)
    assert next(out_gpu.parameters()).is_cuda and not next(model.parameters()).is_cuda
    assert cert_gpu.sigma == cert_cpu.sigma
    torch.testing.assert_close(flat_params(out_gpu).cpu(), flat_params(out_cpu), rtol=1e-4, atol=1e-5)
    cert_gpu.verify(out_gpu)


class _DataDependent(torch.nn.Module):
    """Python control flow on tensor values: fine for autograd, refused by torch.func.vmap."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 10)
        self.scale = torch.nn.Parameter(torch.ones(()))  # not an nn.Linear: no Linear route

    def forward(self, x):
        out = self.lin(x.flatten(1)) * self.scale
        return out if float(out.sum()) > -1e9 else -out


def test_non_vmap_compatible_model_is_refused_for_per_sample_only():
    _, x, y = tiny_problem()
    torch.manual_seed(0)
    model = _DataDependent()
    before = C.weights_sha256(model)
    kw = dict(eps=EPS, delta=DELTA, C0=0.5, C1=0.05, lr=0.1, steps=3, progress=False)
    with pytest.raises(ValueError, match=r"clip='per_sample' needs a forward that works under "
                                         r"torch.func.vmap.*use clip='batch'"):
        unlearn(model, (x, y), clip="per_sample", **kw)
    with pytest.raises(ValueError, match="torch.func.vmap"):
        unlearn(model, (x, y), clip="per_sample", inplace=True, **kw)
    assert C.weights_sha256(model) == before
    assert all(p.grad is None for p in model.parameters())
    unlearn(model, (x, y), clip="batch", **kw)  # plain backward works


# ----------------------------------------------------------------------------------------------
# A failed run leaves the caller's model as it was, also with inplace=True
# ----------------------------------------------------------------------------------------------

class _Stop(BaseException):
    pass


def _nan_once(switch):
    """A loss that turns NaN once ``switch`` (the callback named so) has been called."""
    on = []

    def loss_fn(out, y):
        loss = torch.nn.functional.cross_entropy(out, y)
        return loss * float("nan") if on else loss
    return {"loss_fn": loss_fn, switch: lambda *args: on.append(1)}


def _interrupt(*args):
    raise KeyboardInterrupt


def _raise_stop(*args):
    raise _Stop


FAILURES = [
    (dict(finetune_epochs=5, finetune_lr=1e30), ValueError, "fine-tune diverged"),
    (dict(finetune_epochs=5, nan_after="after_noisy_phase"), ValueError, "fine-tune diverged"),
    (dict(C0=1e30), ValueError, "non-finite"),
    (dict(lr=1e30, C1=1.0, C0=1.0), ValueError, "non-finite"),
    (dict(after_noisy_phase=_interrupt), KeyboardInterrupt, ""),
    (dict(finetune_epochs=2, epoch_callback=_raise_stop), _Stop, ""),
    (dict(finetune_epochs=2, epoch_callback=_interrupt, clip="per_sample"), KeyboardInterrupt,
     ""),
]


@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("change, error, message", FAILURES,
                         ids=[f"{sorted(f[0])}-{f[1].__name__}" for f in FAILURES])
def test_failed_run_leaves_the_model_as_it_was(change, error, message, inplace):
    model, x, y = tiny_problem()
    model.eval()
    before = C.weights_sha256(model)
    params = [(p, p.data_ptr(), p.requires_grad) for p in model.parameters()]
    grad = torch.ones_like(model.net[0].bias)
    model.net[0].bias.grad = grad
    kw = dict(eps=EPS, delta=DELTA, C0=0.5, C1=0.05, lr=0.1, steps=3, progress=False, seed=0,
              private=[n for n, _ in model.named_parameters()])
    kw.update(change)
    if "nan_after" in kw:
        kw.update(_nan_once(kw.pop("nan_after")))
    with pytest.raises(error, match=message):
        unlearn(model, (x, y), inplace=inplace, **kw)
    assert C.weights_sha256(model) == before
    assert all(p is q and p.data_ptr() == ptr and p.requires_grad == rg
               for (q, ptr, rg), p in zip(params, model.parameters()))
    assert model.net[0].bias.grad is grad
    assert not any(m.training for m in model.modules())


def test_private_parameters_with_requires_grad_false_are_fine_tuned():
    model, x, y = tiny_problem()
    for p in model.parameters():
        p.requires_grad_(False)
    head = [n for n, _ in model.named_parameters()][-2:]
    kw = dict(eps=EPS, delta=DELTA, C0=0.5, C1=0.05, lr=0.1, steps=3, progress=False, seed=0)
    out, cert = unlearn(model, (x, y), private=head, finetune_epochs=2, **kw)
    noisy, _ = unlearn(model, (x, y), private=head, **kw)
    named, named_noisy = dict(out.named_parameters()), dict(noisy.named_parameters())
    assert not torch.equal(named[head[0]], named_noisy[head[0]])  # the fine-tuning ran
    assert cert.public_parameters["names"] == [n for n, _ in model.named_parameters()][:-2]
    assert not any(p.requires_grad for p in out.parameters())  # flags as given


@pytest.mark.parametrize("change, message", [
    (dict(delta=float("nan")), r"delta must be a real number > 0.0 and < 1.0, got nan"),
    (dict(delta=1.0), r"delta must be a real number > 0.0 and < 1.0, got 1.0"),
    (dict(eps=float("inf")), r"eps must be a real number > 0.0, got inf"),
    (dict(device="meta"), r"device must be one that holds data.*got 'meta'"),
])
def test_guarantee_and_device_are_named_before_any_work(change, message, monkeypatch):
    import certunlearn_train.unlearn as U
    if "device" not in change:  # scalars are checked before the model or data are looked at
        monkeypatch.setattr(U, "prepare_run", lambda *a, **k: pytest.fail("work started"))
    model, x, y = tiny_problem()
    kw = dict(eps=EPS, delta=DELTA, C0=0.5, C1=0.05, lr=0.1, steps=3, progress=False)
    kw.update(change)
    with pytest.raises(ValueError, match=message):
        U.unlearn(model, (x, y), **kw)

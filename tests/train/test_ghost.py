"""Ghost norms and the clipped mean against an explicit float64 per-sample loop, layer by layer.

The reference differentiates ``loss_fn(model(x[i:i+1]), y[i:i+1])`` of a float64 copy of the
model one sample at a time, so it forms every per-sample gradient; the ghost route never does.
"""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from certunlearn_train import grad as G
from certunlearn_train._flat import FlatParameters, GradientSource
from tests.hypothesis_budget import examples


def explicit(model, params, x, y, clip, loss_fn=F.cross_entropy):
    """(squared norms (B,), clipped mean (d,)) in float64, one sample at a time."""
    ref = copy.deepcopy(model).double()
    where = {id(p): i for i, p in enumerate(model.parameters())}
    ref_params = list(ref.parameters())
    ps = [ref_params[where[id(p)]] for p in params]
    x = x.double() if x.is_floating_point() else x
    y = y.double() if y.is_floating_point() else y
    sq, total = [], 0.0
    for i in range(len(x)):
        gs = torch.autograd.grad(loss_fn(ref(x[i:i + 1]), y[i:i + 1]), ps, allow_unused=True)
        g = torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1)
                       for t, p in zip(gs, ps)])
        sq.append(float(g.square().sum()))
        total = total + g * min(1.0, clip / max(float(g.norm()), 1e-300))
    return torch.tensor(sq, dtype=torch.float64), total / len(x)


def ghost(model, x, y, clip, loss_fn=F.cross_entropy, flat=None):
    flat = flat or FlatParameters(model)
    engine = G.GhostClipping(model, flat, loss_fn)
    assert G.uncovered_reason(model, flat) is None
    out = torch.zeros(flat.numel)
    engine.clipped_mean(out, x, y, clip)
    return engine.last_sq_norms, out.double(), flat


def check(model, x, y, loss_fn=F.cross_entropy, rtol=2e-4):
    """Norms and clipped means (with a clip that binds for about half the samples) agree."""
    flat = FlatParameters(model)
    sq_ref, _ = explicit(model, flat.params, x, y, float("inf"), loss_fn)
    clip = float(sq_ref.sqrt().median()) if float(sq_ref.max()) > 0 else 1.0
    sq, mean, _ = ghost(model, x, y, clip, loss_fn, flat)
    _, mean_ref = explicit(model, flat.params, x, y, clip, loss_fn)
    torch.testing.assert_close(sq, sq_ref, rtol=rtol, atol=1e-10)
    scale = float(mean_ref.abs().max()) + 1e-12
    torch.testing.assert_close(mean, mean_ref, rtol=rtol, atol=rtol * scale)


class Head(nn.Module):
    """A model ending in ``reduce``: (B, ...) features -> (B, k) by flattening and a Linear."""

    def __init__(self, body, k=3):
        super().__init__()
        self.body = body
        self.k = k
        self.fc = None

    def forward(self, x):
        h = self.body(x).flatten(1)
        return self.fc(h)

    def build(self, x):
        with torch.no_grad():
            self.fc = nn.Linear(self.body(x[:1]).flatten(1).shape[1], self.k)
        return self


SMALL = settings(max_examples=examples(6), deadline=None)


@SMALL
@given(b=st.integers(1, 5), t=st.sampled_from([None, 1, 3, 7]), din=st.integers(1, 6),
       dout=st.integers(1, 40), bias=st.booleans(), seed=st.integers(0, 99))
def test_linear_any_leading_dims(b, t, din, dout, bias, seed):
    # t = None: (B, in) inputs; else (B, t, in) (Gram route when t^2 (m + n) < t m n)
    torch.manual_seed(seed)
    x = torch.randn(b, din) if t is None else torch.randn(b, t, din)
    model = Head(nn.Sequential(nn.Linear(din, dout, bias=bias), nn.Tanh())).build(x)
    check(model, x, torch.randint(0, 3, (b,)))


def test_linear_gram_and_formed_routes_both_exact():
    torch.manual_seed(1)
    for t, din, dout in ((2, 30, 30), (40, 2, 3)):  # Gram cheaper / forming cheaper
        x = torch.randn(4, t, din)
        rep = G.Outer(torch.randn(4, 1, t, dout), x[:, None])
        assert G._types._gram_is_cheaper(rep) == (t == 2)
        check(Head(nn.Sequential(nn.Linear(din, dout), nn.Tanh())).build(x), x,
              torch.randint(0, 3, (4,)))


def _conv_case(b, cin, groups, k, stride, pad, dil, mode, size, two_d, bias, seed):
    """A Conv1d/Conv2d of the drawn geometry and its input; ``groups`` (1 where it does not divide
    ``cin``) is returned with them."""
    if cin % groups:
        groups = 1
    if pad == "same":
        stride = 1
    torch.manual_seed(seed)
    conv = (nn.Conv2d if two_d else nn.Conv1d)(cin, 2 * groups, k, stride=stride, padding=pad,
                                                 dilation=dil, groups=groups, bias=bias,
                                                 padding_mode=mode)
    x = torch.randn(b, cin, size, size) if two_d else torch.randn(b, cin, size)
    return conv, x, groups


@SMALL
@given(b=st.integers(1, 4), cin=st.sampled_from([1, 2, 4]), groups=st.sampled_from([1, 2]),
       k=st.integers(1, 3), stride=st.integers(1, 2), pad=st.sampled_from([0, 1, "same"]),
       dil=st.integers(1, 2), mode=st.sampled_from(["zeros", "reflect", "circular"]),
       size=st.integers(5, 9), two_d=st.booleans(), bias=st.booleans(), seed=st.integers(0, 99))
def test_conv_any_geometry(b, cin, groups, k, stride, pad, dil, mode, size, two_d, bias, seed):
    conv, x, groups = _conv_case(b, cin, groups, k, stride, pad, dil, mode, size, two_d, bias,
                                 seed)
    check(Head(nn.Sequential(conv, nn.Tanh())).build(x), x, torch.randint(0, 3, (b,)))


def test_patches_equal_unfold_with_their_zero_border():
    # the patch copy writes the zero border itself: every kernel, stride, dilation and padding
    # here, including paddings wider than the kernel reaches and outputs with rows that read
    # only padding, must give F.unfold's numbers exactly
    import itertools
    torch.manual_seed(0)
    for kh, kw, s, d, ph, pw, h, w in itertools.product(
            (1, 2, 3), (1, 3), (1, 2, 3), (1, 2), (0, 1, 3), (0, 2, 4), (1, 4, 7), (2, 5)):
        if h + 2 * ph < d * (kh - 1) + 1 or w + 2 * pw < d * (kw - 1) + 1:
            continue
        x = torch.randn(2, 3, h, w)
        got = G.conv._patches(x, (kh, kw), (s, s), (d, d), (ph, pw))
        want = F.unfold(x, (kh, kw), dilation=d, padding=(ph, pw), stride=s)
        assert torch.equal(got, want), (kh, kw, s, d, ph, pw, h, w)


class grouped_route_from:
    """Within: the conv rule's grouped-convolution route taken from ``channels`` input channels
    per group (1: wherever the shape allows it; a large number: never)."""

    def __init__(self, channels):
        self.channels = channels

    def __enter__(self):
        self.saved = G.conv.GROUPED_MIN_CHANNELS
        G.conv.GROUPED_MIN_CHANNELS = self.channels

    def __exit__(self, *exc):
        G.conv.GROUPED_MIN_CHANNELS = self.saved


@SMALL
@given(b=st.integers(1, 4), cin=st.sampled_from([1, 2, 4, 8]), groups=st.sampled_from([1, 2]),
       k=st.integers(2, 3), stride=st.integers(1, 3), pad=st.sampled_from([0, 1, "same"]),
       dil=st.integers(1, 2), mode=st.sampled_from(["zeros", "reflect", "circular"]),
       size=st.integers(5, 9), two_d=st.booleans(), bias=st.booleans(), seed=st.integers(0, 99))
def test_conv_grouped_route_any_geometry(b, cin, groups, k, stride, pad, dil, mode, size, two_d,
                                         bias, seed):
    """The per-sample gradients formed by one grouped convolution over the batch: any stride,
    padding (modes), dilation, groups, Conv1d and Conv2d, with and without bias."""
    conv, x, groups = _conv_case(b, cin, groups, k, stride, pad, dil, mode, size, two_d, bias,
                                 seed)
    with grouped_route_from(1):
        out = conv(x)
        form = G.conv.conv_rule(conv, (x,), torch.randn_like(out))["weight"]
        t = out[0, 0].numel()
        m, n = 2, cin // groups * k ** (2 if two_d else 1)
        assert isinstance(form, G.PerSample) == (t * t * (m + n) >= t * m * n)
        check(Head(nn.Sequential(conv, nn.Tanh())).build(x), x, torch.randint(0, 3, (b,)))


def test_conv_routes_agree_and_the_shape_picks_one():
    """Both conv routes on one layer give the same norms and clipped mean; by default a layer
    with 8 input channels per group and a 3x3 kernel takes the grouped route, a 1x1 or a
    3-channel input the patches."""
    torch.manual_seed(0)
    x = torch.randn(3, 8, 7, 7)
    for channels in (1, 10 ** 6):
        with grouped_route_from(channels):
            model = Head(nn.Sequential(nn.Conv2d(8, 6, 3, padding=1, stride=2), nn.Tanh(),
                                       nn.Conv2d(6, 4, 3), nn.Tanh())).build(x)
            check(model, x, torch.randint(0, 3, (3,)))
    wide, one, thin = nn.Conv2d(8, 6, 3), nn.Conv2d(8, 6, 1), nn.Conv2d(3, 6, 3)
    for conv, grouped in ((wide, True), (one, False), (thin, False)):
        xi = torch.randn(2, conv.in_channels, 9, 9)
        form = G.conv.conv_rule(conv, (xi,), conv(xi).detach())["weight"]
        assert isinstance(form, G.PerSample) == grouped


@SMALL
@given(b=st.integers(1, 4), t=st.integers(1, 6), vocab=st.integers(2, 6), dim=st.integers(1, 5),
       pad=st.sampled_from([None, 0]), seed=st.integers(0, 99))
def test_embedding_repeated_ids(b, t, vocab, dim, pad, seed):
    # a small vocabulary makes equal ids within a sample common (the cross terms)
    torch.manual_seed(seed)
    emb = nn.Embedding(vocab, dim, padding_idx=pad)
    ids = torch.randint(0, vocab, (b, t))
    check(Head(nn.Sequential(emb, nn.Tanh())).build(ids), ids, torch.randint(0, 3, (b,)))


class BagOfIds(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, ids):
        return self.out(self.emb(ids).sum(1))


def test_embedding_of_empty_sequences_has_a_zero_gradient():
    torch.manual_seed(0)
    # (one label for all, so the identical samples' bias gradients do not cancel in the mean)
    check(BagOfIds(), torch.zeros(4, 0, dtype=torch.long), torch.zeros(4, dtype=torch.long))


@SMALL
@given(b=st.integers(1, 4), c=st.sampled_from([2, 4]), groups=st.sampled_from([1, 2]),
       layer=st.booleans(), affine=st.booleans(), seed=st.integers(0, 99))
def test_norm_layers(b, c, groups, layer, affine, seed):
    torch.manual_seed(seed)
    x = torch.randn(b, c, 3, 2)
    norm = nn.LayerNorm([3, 2], elementwise_affine=affine) if layer else \
        nn.GroupNorm(groups, c, affine=affine)
    if affine:  # move the affine parameters off (1, 0) so their gradients are generic
        with torch.no_grad():
            for p in norm.parameters():
                p.add_(torch.randn_like(p))
    check(Head(nn.Sequential(nn.Conv2d(c, c, 1), norm, nn.Tanh())).build(x), x,
          torch.randint(0, 3, (b,)))


class Tied(nn.Module):
    """Embedding whose table is also the output layer (a tied language-model head)."""

    def __init__(self, vocab=5, dim=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mid = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(torch.tanh(self.mid(self.emb(ids))).mean(1))


class Twice(nn.Module):
    """One Linear and one conv each applied twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = torch.tanh(self.conv(torch.tanh(self.conv(x)))).mean((2, 3))
        h = h.repeat(1, 2)
        return self.lin(torch.tanh(self.lin(h)))


@pytest.mark.parametrize("seed", [0, 1])
def test_shared_parameters_include_cross_terms(seed):
    torch.manual_seed(seed)
    ids = torch.randint(0, 5, (6, 4))
    check(Tied(), ids, torch.randint(0, 5, (6,)))


@pytest.mark.parametrize("channels", [1, 10 ** 6])
def test_conv_called_twice_on_either_route(channels):
    torch.manual_seed(0)
    x = torch.randn(5, 2, 5, 5)
    with grouped_route_from(channels):
        check(Twice(), x, torch.randint(0, 4, (5,)))
    check(Twice(), torch.randn(5, 2, 4, 4), torch.randint(0, 4, (5,)))


def test_reused_buffers_never_alias_within_a_step_and_are_reused_across_steps(monkeypatch):
    # every temporary goes through the workspace here (no size threshold): the conv called
    # twice needs two patch buffers alive at once, and a second step reuses both
    from certunlearn_train.grad import workspace
    monkeypatch.setattr(workspace, "MIN_BYTES", 0)
    torch.manual_seed(0)
    x, y = torch.randn(5, 2, 5, 5), torch.randint(0, 4, (5,))
    check(Twice(), x, y)
    model = Twice()
    flat = FlatParameters(model)
    engine = G.GhostClipping(model, flat, F.cross_entropy)
    first, second = torch.zeros(flat.numel), torch.zeros(flat.numel)
    engine.clipped_mean(first, x, y, 0.5)
    buffers = {k: v.data_ptr() for k, v in engine._workspace._buffers.items()}
    assert len({k[1] for k in buffers}) == 1 and len(buffers) == 2  # two calls, one name
    engine.clipped_mean(second, x, y, 0.5)
    assert {k: v.data_ptr() for k, v in engine._workspace._buffers.items()} == buffers
    assert torch.equal(first, second)


def test_any_loss_function():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    x = torch.randn(6, 5)
    check(model, x, torch.randn(6, 3), loss_fn=F.mse_loss)
    check(model, x, torch.randint(0, 3, (6,)),
          loss_fn=lambda o, t: F.cross_entropy(o, t, label_smoothing=0.1))


def test_inplace_activation_after_a_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(inplace=True), nn.Linear(6, 3))
    check(model, torch.randn(6, 5), torch.randint(0, 3, (6,)))


def test_parameters_outside_flat_get_no_work_and_no_norm():
    # FlatParameters over a subset (the private head); the public layers get no gradient work
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 3))
    private = [model[3].weight, model[3].bias]
    x, y = torch.randn(6, 2, 4, 4), torch.randint(0, 3, (6,))
    sq_ref, mean_ref = explicit(model, private, x, y, 0.3)
    flat = FlatParameters(model, params=private)
    try:
        sq, mean, _ = ghost(model, x, y, 0.3, flat=flat)
        assert all(p.grad is None for p in model[0].parameters())
    finally:
        flat.release()
    torch.testing.assert_close(sq, sq_ref, rtol=2e-4, atol=1e-10)
    torch.testing.assert_close(mean, mean_ref, rtol=2e-4, atol=1e-7)
    # a layer without a rule whose parameters are all public does not matter
    model = nn.Sequential(nn.Linear(5, 6), nn.PReLU(), nn.Linear(6, 3))
    flat = FlatParameters(model, params=[model[2].weight, model[2].bias])
    try:
        assert G.uncovered_reason(model, flat) is None
    finally:
        flat.release()
    assert G.uncovered_reason(model, FlatParameters(model)) is not None


def test_unknown_layer_falls_back_to_vmap_and_warns_once_naming_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.PReLU(), nn.Linear(6, 3))
    flat = FlatParameters(model)
    G.engine._warned.clear()
    with pytest.warns(RuntimeWarning, match=r"layer '1' \(PReLU\).*no per-sample"):
        src = GradientSource(model, flat, "per_sample", 0.5, F.cross_entropy, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GradientSource(model, flat, "per_sample", 0.5, F.cross_entropy, 4)
    assert src.ghost is None
    x, y = torch.randn(4, 5), torch.randint(0, 3, (4,))
    rows = src(x, y)
    assert src.route == "rows" and rows.shape == (4, flat.numel)
    torch.testing.assert_close(src.norms, rows.double().norm(dim=1), rtol=1e-12, atol=0)


class Reads(nn.Module):
    """Uses ``fc.weight`` outside ``fc``'s forward: the ghost route must notice."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) + x @ self.fc.weight


def test_parameter_read_outside_its_layer_falls_back():
    torch.manual_seed(0)
    model = Reads()
    flat = FlatParameters(model)
    x, y = torch.randn(5, 4), torch.randint(0, 4, (5,))
    with pytest.raises(G.NotCovered, match="outside"):
        G.GhostClipping(model, flat, F.cross_entropy).clipped_mean(
            torch.zeros(flat.numel), x, y, 1.0)
    G.engine._warned.clear()
    src = GradientSource(model, flat, "per_sample", 0.5, F.cross_entropy, 5)
    with pytest.warns(RuntimeWarning, match="vmap route"):
        src.probe(x, y)
    assert src.ghost is None
    sq_ref, _ = explicit(model, flat.params, x, y, 1.0)
    rows = src(x, y)
    torch.testing.assert_close(rows.double().square().sum(1), sq_ref, rtol=1e-5, atol=1e-10)


class BatchMix(nn.Module):
    """Mixes samples (subtracts the batch mean): no per-sample gradient decomposition."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.fc(x)
        return h - h.mean(0, keepdim=True)


def test_probe_catches_a_model_that_mixes_samples():
    torch.manual_seed(0)
    model = BatchMix()
    flat = FlatParameters(model)
    src = GradientSource(model, flat, "per_sample", 0.5, F.cross_entropy, 5)
    G.engine._warned.clear()
    with pytest.warns(RuntimeWarning, match="disagree"):
        src.probe(torch.randn(5, 4), torch.randint(0, 3, (5,)))
    assert src.ghost is None


def test_probe_keeps_the_ghost_route_when_the_excess_is_its_own_rounding_bound():
    # a wide 3x3 convolution takes the Gram route, whose squared norms carry a rigorous
    # rounding bound well above 1e-3 of the norm here: the safe side, not a layer that mixes
    # samples, so the probe must not send the model to the slow route
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(512, 128, 3, padding=1, bias=False), nn.Tanh(),
                          nn.Flatten(), nn.Linear(128 * 64, 3))
    x, y = torch.randn(3, 512, 8, 8), torch.randint(0, 3, (3,))
    flat = FlatParameters(model)
    src = GradientSource(model, flat, "per_sample", 1.0, F.cross_entropy, 3)
    G.engine._warned.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        src.probe(x, y)
    assert src.route == "ghost" and src.ghost is not None
    sq, margin = src.ghost.last_sq_norms, src.ghost.last_sq_margin
    exact, _ = explicit(model, flat.params, x, y, float("inf"))
    assert bool((margin > 2e-3 * exact).all())     # a two-sided 1e-3 check would refuse it
    assert bool((sq >= exact * (1 - 1e-6)).all())  # never below the exact norms
    assert bool((sq <= exact + 1.01 * margin + 1e-4 * exact).all())


class Scale(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(n))

    def forward(self, x):
        return x * self.scale


def test_registered_rule_is_used():
    def scale_rule(module, inputs, g):
        x = inputs[0]
        return {"scale": G.PerSample((g * x).reshape(len(x), -1, x.shape[-1]).sum(1))}

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), Scale(4), nn.Tanh(), nn.Linear(4, 3))
    assert G.uncovered_reason(model, FlatParameters(model)) is not None
    G.register(Scale, scale_rule)
    try:
        check(model, torch.randn(5, 3), torch.randint(0, 3, (5,)))
    finally:
        G.registry._RULES.pop(Scale)
    with pytest.raises(ValueError, match="module_type"):
        G.register(int, scale_rule)


def test_a_rule_taking_output_gets_the_calls_output_with_its_graph():
    seen = []

    def scale_rule(module, inputs, g, output=None):
        seen.append((output.shape, output.grad_fn is not None))
        x = inputs[0]
        return {"scale": G.PerSample((g * x).reshape(len(x), -1, x.shape[-1]).sum(1))}

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), Scale(4), nn.Tanh(), nn.Linear(4, 3))
    G.register(Scale, scale_rule)
    try:
        check(model, torch.randn(5, 3), torch.randint(0, 3, (5,)))
    finally:
        G.registry._RULES.pop(Scale)
    assert seen == [(torch.Size([5, 4]), True)]


def test_layer_norm_reads_the_statistics_of_its_forward(monkeypatch):
    from certunlearn_train.grad import norm
    used = []
    saved = norm._saved_layer_norm_stats
    monkeypatch.setattr(norm, "_saved_layer_norm_stats",
                        lambda *a: used.append(saved(*a)) or used[-1])
    torch.manual_seed(0)
    ln = nn.LayerNorm([3, 4])
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    model = nn.Sequential(nn.Linear(4, 4), ln, nn.Tanh(), nn.Flatten(), nn.Linear(12, 3))
    x = torch.randn(6, 3, 4) * 5 + 3
    check(model, x, torch.randint(0, 3, (6,)))
    assert len(used) == 1 and used[0] is not None
    # without the forward's graph the rule normalises again, to the same numbers
    with torch.enable_grad():
        h = model[0](x)
        out = ln(h)
    g = torch.randn_like(out)
    fast = norm.layer_norm_rule(ln, (h.detach(),), g, output=out)
    slow = norm.layer_norm_rule(ln, (h.detach(),), g)
    for k in ("weight", "bias"):
        torch.testing.assert_close(fast[k].grads, slow[k].grads, rtol=1e-5, atol=1e-6)


def test_embedding_with_max_norm_is_not_covered():
    model = nn.Sequential(nn.Embedding(5, 3, max_norm=1.0), nn.Flatten(), nn.Linear(6, 2))
    assert "max_norm" in G.uncovered_reason(model, FlatParameters(model))


def test_gradient_source_takes_ghost_route_for_the_cnn():
    from certunlearn_train.models import SmallCNN
    torch.manual_seed(0)
    model = SmallCNN(1, 8, 10)
    flat = FlatParameters(model)
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    src = GradientSource(model, flat, "per_sample", 0.05, F.cross_entropy, 6)
    src.probe(x, y)
    row = src(x, y)
    assert src.route == "ghost" and row.shape == (1, flat.numel) and src.rows is None
    _, mean_ref = explicit(model, flat.params, x, y, 0.05)
    torch.testing.assert_close(row[0].double(), mean_ref, rtol=2e-4, atol=1e-8)


def test_rows_route_norms_feed_the_fused_step():
    # the vmap route's producer norms (taken chunk by chunk) stand in for the op's own pass
    from certunlearn_train import ops
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.PReLU(), nn.Linear(6, 3))
    flat = FlatParameters(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = GradientSource(model, flat, "per_sample", 0.5, F.cross_entropy, 9)
    src.per_sample.chunk = 4  # several chunks
    x, y = torch.randn(9, 5), torch.randint(0, 3, (9,))
    rows = src(x, y)
    kw = dict(lr=0.3, clip=0.5, noise_std=0.1, seed=3, offset=0)
    a, b = flat.flat.clone(), flat.flat.clone()
    own = ops.noisy_step_(a, rows, **kw)
    given = ops.noisy_step_(b, rows, norms=src.norms, **kw)
    torch.testing.assert_close(src.norms, own, rtol=1e-12, atol=0)
    torch.testing.assert_close(given, own, rtol=1e-12, atol=0)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    c = flat.flat.clone()
    ops.noisy_step_(c, rows, norms=own, **kw)
    assert torch.equal(a, c)  # given the op's own norms, the step is the same bit for bit


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["cnn", "tied", "conv1d_groups", "norms"])
def test_ghost_route_on_cuda_matches_the_cpu_loop(kind):
    torch.manual_seed(0)
    if kind == "cnn":
        from certunlearn_train.models import SmallCNN
        model, x, y = SmallCNN(1, 8, 10), torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    elif kind == "tied":
        model, x, y = Tied(), torch.randint(0, 5, (6, 4)), torch.randint(0, 5, (6,))
    elif kind == "conv1d_groups":
        x = torch.randn(5, 4, 9)
        model = Head(nn.Sequential(nn.Conv1d(4, 4, 3, stride=2, dilation=2, groups=2,
                                             padding_mode="reflect", padding=1),
                                   nn.Tanh())).build(x)
        y = torch.randint(0, 3, (5,))
    else:
        x = torch.randn(5, 4, 3, 2)
        model = Head(nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4), nn.Tanh(),
                                   nn.LayerNorm([3, 2]))).build(x)
        y = torch.randint(0, 3, (5,))
    sq_ref, _ = explicit(model, list(model.parameters()), x, y, float("inf"))
    clip = float(sq_ref.sqrt().median())
    _, mean_ref = explicit(model, list(model.parameters()), x, y, clip)
    model = model.cuda()
    flat = FlatParameters(model)
    engine = G.GhostClipping(model, flat, F.cross_entropy)
    out = torch.zeros(flat.numel, device="cuda")
    engine.clipped_mean(out, x.cuda(), y.cuda(), clip)
    torch.testing.assert_close(engine.last_sq_norms.cpu(), sq_ref, rtol=2e-4, atol=1e-10)
    torch.testing.assert_close(out.double().cpu(), mean_ref, rtol=2e-4,
                               atol=2e-4 * float(mean_ref.abs().max()))


def test_loss_that_fails_under_vmap_is_not_covered():
    def loss_with_item(o, t):
        return F.cross_entropy(o, t) * (1.0 if float(o.sum()) > -1e30 else 0.0)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3))
    flat = FlatParameters(model)
    with pytest.raises(G.NotCovered, match="vmap"):
        G.GhostClipping(model, flat, loss_with_item).clipped_mean(
            torch.zeros(flat.numel), torch.randn(4, 3), torch.randint(0, 3, (4,)), 1.0)


class SharedScale(nn.Module):
    """A LayerNorm whose weight is also used by a Scale layer (PerSample + PerSample), and a
    Linear whose weight is also a registered layer's parameter (Outer + PerSample): combined by
    forming the per-sample gradients."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.scale = Scale(4)
        self.scale.scale = self.norm.weight
        self.lin = nn.Linear(4, 4)
        self.mat = MatVec(self.lin.weight)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.tanh(self.scale(self.norm(x)))
        return self.out(torch.tanh(self.lin(h)) + self.mat(h))


class MatVec(nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        return x @ self.weight.t()


def test_shared_parameters_across_forms_and_chunked_norms(monkeypatch):
    def scale_rule(module, inputs, g):
        x = inputs[0]
        return {"scale": G.PerSample((g * x).reshape(len(x), -1, x.shape[-1]).sum(1))}

    def matvec_rule(module, inputs, g):
        x = inputs[0]
        return {"weight": G.PerSample(torch.einsum("bo,bi->boi", g, x))}

    torch.manual_seed(0)
    model = SharedScale()
    with torch.no_grad():
        model.norm.weight.add_(torch.randn(4))
    x, y = torch.randn(7, 4), torch.randint(0, 3, (7,))
    G.register(Scale, scale_rule)
    G.register(MatVec, matvec_rule)
    try:
        check(model, x, y)
        # Gram and formed norms in chunks of two samples give the same answer
        monkeypatch.setattr(G._types, "WORK_BYTES", 1)
        torch.manual_seed(1)
        seq = torch.randn(5, 6, 3)
        for dout in (40, 2):  # Gram route, then the formed route
            check(Head(nn.Sequential(nn.Linear(3, dout), nn.Tanh())).build(seq), seq,
                  torch.randint(0, 3, (5,)))
    finally:
        G.registry._RULES.pop(Scale)
        G.registry._RULES.pop(MatVec)


def test_oversized_forms_fall_back_to_vmap(monkeypatch):
    torch.manual_seed(0)
    model = Tied()
    flat = FlatParameters(model)
    ids, y = torch.randint(0, 5, (4, 3)), torch.randint(0, 5, (4,))
    monkeypatch.setattr(G._types, "WORK_BYTES", 8)
    with pytest.raises(G.NotCovered, match="GiB"):
        G.GhostClipping(model, flat, F.cross_entropy).clipped_mean(
            torch.zeros(flat.numel), ids, y, 1.0)
    G.engine._warned.clear()
    src = GradientSource(model, flat, "per_sample", 0.5, F.cross_entropy, 4)
    with pytest.warns(RuntimeWarning, match="GiB"):
        rows = src(ids, y)
    assert src.route == "rows" and rows.shape == (4, flat.numel)

"""The fused noisy-step op against its float64 pure-PyTorch reference, on CPU and CUDA."""
import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from certunlearn_train import ops
from tests.kernel import reference as R

from .helpers import CUDA, DEVICES, sample_inputs

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_extension_is_built():
    """`make setup` builds the extension; without it every op test below would test the fallback."""
    assert ops.extension_available(), ops.extension_unavailable_reason()
    assert torch.ops.certunlearn.noisy_step_.default._schema == torch._C.parse_schema(
        "certunlearn::" + ops.SCHEMA)
    assert torch.ops.certunlearn.gaussian_noise_.default._schema == torch._C.parse_schema(
        "certunlearn::" + ops.NOISE_SCHEMA)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_kernels_are_built():
    assert ops.cuda_kernels_available()


def run_both(x, G, **kw):
    """Run the op and the float64 reference on copies of x; return both results and norms."""
    x_op, x_ref = x.clone(), x.clone()
    n_op = ops.noisy_step_(x_op, G, **kw)
    n_ref = R.noisy_step_reference(x_ref, G, **kw)
    return x_op, x_ref, n_op, n_ref


def assert_step_close(x_op, x_ref, scale):
    # Float32 result of a float64 computation: agree to a few float32 ulps of the largest term.
    torch.testing.assert_close(x_op.cpu(), x_ref.cpu(), rtol=2e-6, atol=4e-7 * scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,d", [(1, 1), (1, 7), (1, 4096), (3, 1001), (8, 4100), (33, 2050)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("clip", [math.inf, 0.7], ids=["noclip", "clip"])
@pytest.mark.parametrize("radius", [math.inf, 1.5], ids=["noproj", "proj"])
@pytest.mark.parametrize("noise_after", [True, False], ids=["noise-after", "noise-before"])
def test_op_matches_reference(device, B, d, clip, radius, noise_after):
    x, G = sample_inputs(B, d, device=device, seed=B * 1000 + d, scale=0.3)
    kw = dict(lr=0.4, weight_decay=0.05, clip=clip, noise_std=0.2, radius=radius,
              noise_after_projection=noise_after, seed=2 ** 63 + 12345, offset=17)
    x_op, x_ref, n_op, n_ref = run_both(x, G, **kw)
    assert n_op.dtype == torch.float64 and n_op.shape == (B,)
    torch.testing.assert_close(n_op.cpu(), n_ref.cpu(), rtol=1e-12, atol=0)
    assert_step_close(x_op, x_ref, scale=float(x_ref.abs().max()) + 1)
    assert not torch.equal(x_op, x), "the step changed nothing"


@pytest.mark.parametrize("device", DEVICES)
def test_noise_off_matches_reference(device):
    x, G = sample_inputs(16, 3000, device=device, seed=3)
    x_op, x_ref, _, _ = run_both(x, G, lr=0.3, clip=2.0, radius=5.0, seed=1, offset=0)
    assert_step_close(x_op, x_ref, scale=5.0)


@given(B=st.integers(1, 9), d=st.integers(1, 3000), clip=st.sampled_from([math.inf, 0.0, 0.5, 50.0]),
       radius=st.sampled_from([math.inf, 0.0, 0.3, 40.0]), noise_std=st.sampled_from([0.0, 1e-3, 0.5]),
       noise_after=st.booleans(), lr=st.floats(0.0, 3.0), wd=st.floats(0.0, 0.5),
       seed=st.integers(0, 2 ** 64 - 1), offset=st.integers(0, 2 ** 62),
       with_norms=st.booleans())
def test_op_matches_reference_random(B, d, clip, radius, noise_std, noise_after, lr, wd, seed,
                                     offset, with_norms):
    x, G = sample_inputs(B, d, seed=d + B, x_scale=2.0)
    norms = torch.linalg.vector_norm(G, dim=1, dtype=torch.float64) if with_norms else None
    kw = dict(lr=lr, weight_decay=wd, clip=clip, noise_std=noise_std, radius=radius,
              noise_after_projection=noise_after, seed=seed, offset=offset, norms=norms)
    x_op, x_ref, _, _ = run_both(x, G, **kw)
    scale = float(x.abs().max()) + lr * float(G.abs().max()) + 6 * noise_std + 1
    assert_step_close(x_op, x_ref, scale)


@pytest.mark.parametrize("device", DEVICES)
def test_noise_is_exactly_the_generator_output(device):
    """lr = 0, no projection: x' - x is noise_std times gaussian_noise(d, seed, offset)."""
    d = 5001
    x = torch.zeros(d, device=device)
    G = torch.randn(2, d, device=device)
    ops.noisy_step_(x, G, lr=0.0, noise_std=0.25, seed=99, offset=123)
    z = ops.gaussian_noise(d, 99, 123, device=device, dtype=torch.float64)
    torch.testing.assert_close(x.double(), (0.25 * z).float().double(), rtol=0, atol=0)
    ref = R.gaussian_noise_reference(d, 99, 123, device="cpu", dtype=torch.float64)
    torch.testing.assert_close(z.cpu(), ref, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_offset_gives_identical_noise_and_result(device):
    x, G = sample_inputs(4, 999, device=device, seed=5)
    kw = dict(lr=0.1, clip=1.0, noise_std=1.0, radius=3.0, seed=7, offset=3)
    a, b = x.clone(), x.clone()
    ops.noisy_step_(a, G, **kw)
    ops.noisy_step_(b, G, **kw)
    assert torch.equal(a, b)
    c = x.clone()
    ops.noisy_step_(c, G, **{**kw, "offset": 4})
    assert not torch.equal(a, c)


def test_result_independent_of_thread_count():
    x, G = sample_inputs(37, 70001, seed=11)
    kw = dict(lr=0.2, clip=1.0, noise_std=0.1, radius=10.0, seed=3, offset=0)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            y = x.clone()
            norms = ops.noisy_step_(y, G, **kw)
            outs.append((y, norms))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("device", DEVICES)
def test_precomputed_norms_give_the_same_step(device):
    x, G = sample_inputs(12, 4097, device=device, seed=8)
    kw = dict(lr=0.5, clip=1.0, noise_std=0.1, radius=2.0, seed=1, offset=9)
    a, b = x.clone(), x.clone()
    norms = ops.noisy_step_(a, G, **kw)
    returned = ops.noisy_step_(b, G, norms=norms.float().double(), **kw)
    torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)
    c = x.clone()
    ops.noisy_step_(c, G, norms=norms, **kw)
    assert torch.equal(a, c)
    assert returned.dtype == torch.float64 and returned.data_ptr() != norms.data_ptr()
    torch.testing.assert_close(norms.cpu(), torch.linalg.vector_norm(G.double().cpu(), dim=1),
                               rtol=1e-13, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B", [1, 5])
def test_plain_sgd_when_noise_clip_radius_are_off(device, B):
    """Zero noise, infinite clip and radius: x - lr (mean_i G_i + wd x), as in plain SGD."""
    x, G = sample_inputs(B, 3001, device=device, seed=B)
    y = x.clone()
    ops.noisy_step_(y, G, lr=0.05, weight_decay=0.01, seed=0, offset=0)
    expected = x.double() - 0.05 * (G.double().mean(0) + 0.01 * x.double())
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=2e-7)
    # And the same as torch.optim.SGD on the batch-mean gradient.
    p = torch.nn.Parameter(x.clone())
    opt = torch.optim.SGD([p], lr=0.05, weight_decay=0.01)
    p.grad = G.mean(0)
    opt.step()
    torch.testing.assert_close(y, p.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_clipping_edge_cases(device):
    d = 64
    G = torch.zeros(4, d, device=device)
    G[1, 0] = 2.0          # norm exactly at the clip: unscaled
    G[2, :4] = 3.0         # norm 6: scaled to 2
    G[3, 5] = -1e-30       # tiny row: unscaled
    x = torch.zeros(d, device=device)
    norms = ops.noisy_step_(x, G, lr=4.0, clip=2.0, seed=0, offset=0)
    assert norms.tolist() == pytest.approx([0.0, 2.0, 6.0, 1e-30], rel=1e-12)
    expected = torch.zeros(d, dtype=torch.float64)
    expected[0] -= 2.0
    expected[:4] -= 3.0 * (2.0 / 6.0)
    expected[5] += 1e-30
    torch.testing.assert_close(x.double().cpu(), expected, rtol=1e-6, atol=0)
    y = torch.ones(d, device=device)   # clip = 0 leaves only the weight decay
    ops.noisy_step_(y, G, lr=0.5, weight_decay=0.2, clip=0.0, seed=0, offset=0)
    torch.testing.assert_close(y, torch.full_like(y, 0.9))


@pytest.mark.parametrize("device", DEVICES)
@given(scale=st.floats(1e-3, 1e3), radius=st.floats(1e-3, 1e3), noise=st.sampled_from([0.0, 0.3]),
       d=st.integers(1, 5000))
def test_norm_within_radius_after_step_in_float32(device, scale, radius, noise, d):
    x, G = sample_inputs(3, d, device=device, seed=d, x_scale=scale, scale=scale)
    ops.noisy_step_(x, G, lr=1.0, noise_std=noise * scale, radius=radius,
                    noise_after_projection=False, seed=d, offset=0)
    assert float(torch.linalg.vector_norm(x.double())) <= radius
    assert float(torch.linalg.vector_norm(x)) <= radius * (1 + 1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_inside_ball_untouched_by_projection(device):
    x, G = sample_inputs(2, 100, device=device, seed=1, x_scale=0.01, scale=0.01)
    a, b = x.clone(), x.clone()
    ops.noisy_step_(a, G, lr=0.1, radius=100.0, seed=0, offset=0)
    ops.noisy_step_(b, G, lr=0.1, seed=0, offset=0)
    assert torch.equal(a, b)


def bad_cases(device):
    x, G = sample_inputs(3, 10, device=device)
    ok = dict(lr=0.1, seed=0, offset=0)
    nan_G = G.clone()
    nan_G[2, 9] = float("nan")
    inf_G = G.clone()
    inf_G[0, 0] = -float("inf")
    nan_x = x.clone()
    nan_x[4] = float("nan")
    return [
        ("B=0", x, G[:0], ok, "B >= 1"),
        ("d mismatch", x, G[:, :9].contiguous(), ok, "grads must have shape"),
        ("params 2-D", x.view(2, 5), G, ok, "1-D"),
        ("params float64", x.double(), G, ok, "params must be float32"),
        ("grads float16", x, G.half(), ok, "grads must be float32"),
        ("grads non-contiguous", x, torch.zeros(10, 3, device=device).t(), ok, "contiguous"),
        ("params non-contiguous", torch.zeros(20, device=device)[::2], G, ok, "contiguous"),
        ("negative lr", x, G, {**ok, "lr": -0.1}, "lr must be"),
        ("nan lr", x, G, {**ok, "lr": float("nan")}, "lr must be"),
        ("inf lr", x, G, {**ok, "lr": float("inf")}, "lr must be"),
        ("negative weight_decay", x, G, {**ok, "weight_decay": -1.0}, "weight_decay must be"),
        ("negative clip", x, G, {**ok, "clip": -1.0}, "clip must be"),
        ("negative radius", x, G, {**ok, "radius": -1.0}, "radius must be"),
        ("negative std", x, G, {**ok, "noise_std": -1.0}, "noise_std must be"),
        ("inf std", x, G, {**ok, "noise_std": float("inf")}, "noise_std must be"),
        ("negative offset", x, G, {**ok, "offset": -1}, "offset"),
        ("offset overflow", x, G, {**ok, "offset": 2 ** 63 - 2}, "offset"),
        ("seed too large", x, G, {**ok, "seed": 2 ** 64}, "seed"),
        ("nan in grads", x, nan_G, ok, "non-finite"),
        ("inf in grads", x, inf_G, ok, "non-finite"),
        ("nan in grads, norms given", x, nan_G, {**ok, "norms": torch.ones(3, device=device)},
         "non-finite"),
        ("nan in params", nan_x, G, ok, "non-finite"),
        ("nan in params, lr=0", nan_x, G, {**ok, "lr": 0.0}, "non-finite"),
        ("negative norms", x, G, {**ok, "norms": -torch.ones(3, device=device)}, "norms must be"),
        ("nan norms", x, G, {**ok, "norms": torch.full((3,), float("nan"), device=device)},
         "norms must be"),
        ("norms wrong shape", x, G, {**ok, "norms": torch.ones(4, device=device)}, "norms must have"),
        ("norms int", x, G, {**ok, "norms": torch.ones(3, dtype=torch.int64, device=device)},
         "norms must be float"),
        ("update overflow", x, G * 1e38, {**ok, "lr": 1e10}, "non-finite|overflow"),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("route", ["wrapper", "torch.ops", "reference"])
def test_bad_inputs_raise_and_leave_params_unchanged(device, route):
    for name, x, G, kw, match in bad_cases(device):
        if route == "torch.ops" and kw.get("seed", 0) >= 2 ** 63:
            continue  # not representable as the op's int64: only the wrapper sees it
        before = x.clone()
        with pytest.raises(ValueError, match=match):
            if route == "wrapper":
                ops.noisy_step_(x, G, **kw)
            elif route == "reference":
                R.noisy_step_reference(x, G, **kw)
            else:
                full = {**dict(weight_decay=0.0, clip=math.inf, noise_std=0.0, radius=math.inf),
                        **kw}
                torch.ops.certunlearn.noisy_step_(
                    x, G, kw.get("norms"), full["lr"], full["weight_decay"], full["clip"],
                    full["noise_std"], full["radius"], True, full["seed"], full["offset"])
        assert torch.equal(x, before) or (torch.isnan(before).any() and torch.equal(
            torch.nan_to_num(x), torch.nan_to_num(before))), name


def test_device_mismatch_raises():
    if not CUDA:
        x, G = sample_inputs(2, 5)
        with pytest.raises(ValueError, match="device"):
            ops.noisy_step_(x, G.to("meta"), lr=0.1, seed=0, offset=0)
        return
    x, G = sample_inputs(2, 5)
    before = x.clone()
    with pytest.raises(ValueError, match="device"):
        ops.noisy_step_(x, G.cuda(), lr=0.1, seed=0, offset=0)
    with pytest.raises(ValueError, match="device"):
        ops.noisy_step_(x, G, lr=0.1, seed=0, offset=0, norms=torch.ones(2, device="cuda"))
    assert torch.equal(x, before)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x, G = sample_inputs(3, 33, device=device)
    for norms in (None, torch.linalg.vector_norm(G, dim=1)):
        args = (x.clone(), G, norms, 0.1, 0.01, 1.0, 0.5, 2.0, True, 5, 7)
        torch.library.opcheck(torch.ops.certunlearn.noisy_step_.default, args)
    torch.library.opcheck(torch.ops.certunlearn.gaussian_noise_.default,
                          (torch.empty(11, device=device), 3, 4))


def test_works_under_torch_compile():
    x, G = sample_inputs(4, 257)

    def step(x, G):
        return torch.ops.certunlearn.noisy_step_(x, G, None, 0.1, 0.0, 1.0, 0.1, 5.0, True, 3, 0)

    a, b = x.clone(), x.clone()
    try:
        compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
        n_compiled = compiled(a, G)
    except Exception as exc:  # pragma: no cover - depends on the machine's toolchain
        pytest.skip(f"torch.compile unavailable here: {type(exc).__name__}: {exc}")
    n_eager = step(b, G)
    assert torch.equal(a, b) and torch.equal(n_compiled, n_eager)


def test_without_extension_the_wrappers_raise_a_clear_error():
    """With _C unimportable the package still imports; the op wrappers say how to build it."""
    code = (
        "import sys, torch\n"
        "sys.modules['certunlearn_train._C'] = None\n"
        "from certunlearn_train import ops\n"
        "import certunlearn_train.unlearn, certunlearn_train.grad\n"
        "assert not ops.extension_available() and 'could not be imported' in "
        "ops.extension_unavailable_reason()\n"
        "x = torch.randn(50); G = torch.randn(3, 50)\n"
        "for call in (lambda: ops.noisy_step_(x, G, lr=0.1, seed=1, offset=0),\n"
        "             lambda: ops.gaussian_noise(4, 1, 0)):\n"
        "    try:\n"
        "        call()\n"
        "    except RuntimeError as exc:\n"
        "        assert 'make setup' in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError('no error')\n"
        "assert ops.NoiseStream(seed=3).take(4) == (3, 0)\n"
        "assert not any(m == 'tests' or m.startswith('tests.') for m in sys.modules)\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x, G = sample_inputs(20, 10001, seed=4)
    kw = dict(lr=0.3, weight_decay=0.01, clip=1.0, noise_std=0.5, radius=4.0, seed=2 ** 64 - 3,
              offset=2 ** 40)
    for after in (True, False):
        a, b = x.clone(), x.clone().cuda()
        na = ops.noisy_step_(a, G, noise_after_projection=after, **kw)
        nb = ops.noisy_step_(b, G.cuda(), noise_after_projection=after, **kw)
        torch.testing.assert_close(nb.cpu(), na, rtol=1e-12, atol=0)
        torch.testing.assert_close(b.cpu(), a, rtol=2e-6, atol=2e-6)
    # Unaligned rows (d % 4 != 0) and a misaligned params view take the scalar CUDA path.
    x, G = sample_inputs(5, 1023, seed=6)
    buf = torch.zeros(1024, device="cuda")
    xv = buf[1:]
    xv.copy_(x)
    a = x.clone()
    ops.noisy_step_(a, G, **kw)
    ops.noisy_step_(xv, G.cuda(), **kw)
    torch.testing.assert_close(xv.cpu(), a, rtol=2e-6, atol=2e-6)


def test_cpu_row_blocked_path_matches_reference():
    """B * d * 4 bytes above the CPU row-block budget (4 MB): norms and sums go block by block."""
    x, G = sample_inputs(40, 40_000, seed=21, scale=0.01)
    kw = dict(lr=0.3, weight_decay=0.01, clip=1.0, noise_std=0.05, radius=3.0, seed=9, offset=5)
    x_op, x_ref, n_op, n_ref = run_both(x, G, **kw)
    torch.testing.assert_close(n_op, n_ref, rtol=1e-12, atol=0)
    assert_step_close(x_op, x_ref, scale=float(x_ref.abs().max()) + 1)
    # Blocks are whole groups of eight rows, so the blocked sums equal, bit for bit, the single
    # pass that runs when the norms are given (the same grouping over all rows).
    x_given = x.clone()
    ops.noisy_step_(x_given, G, norms=n_op, **kw)
    assert torch.equal(x_given, x_op)
    # A non-finite value in a later block still leaves params untouched.
    G[35, 123] = float("inf")
    before = x.clone()
    with pytest.raises(ValueError, match="row 35"):
        ops.noisy_step_(x, G, **kw)
    assert torch.equal(x, before)

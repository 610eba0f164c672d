"""Data-parallel unlearning (certunlearn_train.distributed) on CPU with gloo.

Two ranks are spawned (torch.multiprocessing, start method "spawn") and run every scenario of
``SCENARIOS`` once; the test process runs the same scenarios as one process and compares. Each
spawn costs a few seconds (two fresh interpreters importing torch), so the scenarios share one.
"""
import datetime
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from certunlearn_train import distributed
from certunlearn_train.baselines import dpsgd_train, output_perturbation, retrain
from certunlearn_train.unlearn import unlearn
from tests.hypothesis_budget import examples
from tests.train.helpers import Pairs, flat_params, tiny_problem

PG_TIMEOUT_S = 20.0


# ---------------------------------------------------------------------------------------------
# Scenarios: each returns (model, certificate); identical calls on every rank and in one process
# ---------------------------------------------------------------------------------------------

def _data(n=24, seed=0):
    _, x, y = tiny_problem(n, seed)
    return x, y


def _mlp(seed=0):
    return tiny_problem(2, seed)[0]


def _normed(seed=0):
    """Not all nn.Linear (a LayerNorm): per-sample gradients come from torch.func, as rows."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.LayerNorm(8), nn.Tanh(),
                         nn.Linear(8, 10))


GC = dict(eps=50.0, delta=1e-5, C0=1.0, C1=0.5, lr=0.05, progress=False)
MC = dict(eps=50.0, delta=1e-5, method="model_clipping", C0=1.0, C2=2.0, sigma0=0.01, lr=0.05,
          lam=0.1, progress=False)


def _sc_gc_batch():
    return unlearn(_mlp(), _data(), steps=6, batch_size=10, clip="batch", seed=11, **GC)


def _sc_gc_batch_uneven():  # batch 3 over 2 ranks: slices 1 and 2; last batch of 24 is 3
    return unlearn(_mlp(), _data(), steps=5, batch_size=3, clip="batch", seed=12, **GC)


def _sc_gc_per_sample_linear():  # nn.Linear fast path (one clipped-mean row per rank)
    return unlearn(_mlp(), _data(), steps=6, batch_size=10, clip="per_sample", seed=13, **GC)


def _sc_gc_per_sample_rows():  # torch.func rows, clipped here; batch 1: rank 0 has no sample
    return unlearn(_normed(), _data(), steps=4, batch_size=1, clip="per_sample", seed=14, **GC)


def _sc_gc_per_sample_rows_b8():
    return unlearn(_normed(), _data(), steps=4, batch_size=8, clip="per_sample", seed=15, **GC)


def _sc_gc_per_sample_chunked():  # torch.func, clipped and averaged chunk by chunk (one row)
    return unlearn(_normed(), _data(), steps=4, batch_size=8, clip="per_sample", seed=16,
                   grad_buffer_bytes=1, **GC)


def _sc_gc_dataset_per_sample():  # batch 5 over 2 ranks: slices 2 and 3
    return unlearn(_mlp(), Pairs(*_data()), steps=5, batch_size=5, clip="per_sample", seed=25,
                   finetune_epochs=1.0, finetune_lr=0.1, finetune_batch_size=7, **GC)


def _sc_gc_dataset_batch():
    return unlearn(_mlp(), Pairs(*_data()), steps=5, batch_size=10, clip="batch", seed=26, **GC)


def _sc_dpsgd_dataset():
    return dpsgd_train(_mlp(), Pairs(*_data()), eps=50.0, delta=1e-5, group_size=1, epochs=1.0,
                       lr=0.1, clip=0.5, expected_batch_size=8, seed=27, progress=False)


def _sc_mc_batch():
    return unlearn(_mlp(), _data(), steps=5, batch_size=10, clip="batch", seed=17, **MC)


def _sc_mc_per_sample():
    return unlearn(_mlp(), _data(), steps=5, batch_size=10, clip="per_sample", C1=0.5,
                   seed=18, **MC)


def _sc_gc_finetune():  # the noise-free fine-tuning (train()) runs data parallel too
    return unlearn(_mlp(), _data(), steps=3, batch_size=10, clip="batch", seed=19,
                   finetune_epochs=1.0, finetune_lr=0.1, **GC)


def _sc_output_perturbation():
    return output_perturbation(_mlp(), _data(), eps=50.0, delta=1e-5, C0=1.0,
                               finetune_epochs=1.0, finetune_lr=0.1, batch_size=10, seed=20,
                               progress=False)


def _sc_dpsgd():
    return dpsgd_train(_mlp(), _data(), eps=50.0, delta=1e-5, group_size=1, epochs=1.0, lr=0.1,
                       clip=0.5, expected_batch_size=8, seed=21, progress=False)


def _sc_retrain():
    return retrain(_mlp(), _data(), epochs=1.0, lr=0.1, batch_size=10, seed=22, progress=False)


def _smoothed(out, target):  # a loss other than F.cross_entropy, in every backward
    return F.cross_entropy(out, target, label_smoothing=0.1)


def _evaluating_callback(epoch, model):  # eval mode and random numbers: must not change the run
    model.eval()
    torch.rand(3)
    with torch.no_grad():
        model(_data()[0][:4])


def _sc_private_loss_fn_callback():  # public parameters frozen; fine-tuning in other batches
    model = _normed()
    return unlearn(model, _data(), steps=4, batch_size=8, clip="per_sample", seed=23,
                   loss_fn=_smoothed, private=[model[4]], finetune_epochs=2.0,
                   finetune_lr=0.1, finetune_batch_size=7, epoch_callback=_evaluating_callback,
                   **GC)


def _sc_retrain_float_targets():  # a regression loss on float targets (they keep their dtype)
    x, y = _data()
    return retrain(_mlp(), (x, F.one_hot(y, 10).float()), epochs=2.0, lr=0.1, batch_size=10,
                   loss_fn=F.mse_loss, epoch_callback=_evaluating_callback, seed=24,
                   progress=False)


SCENARIOS = {name[4:]: fn for name, fn in dict(globals()).items() if name.startswith("_sc_")}


def _secret_runs():
    """Runs without a seed: only the ranks' agreement can be checked (nothing to compare with)."""
    return {
        "unlearn": unlearn(_mlp(), _data(), steps=4, batch_size=10, finetune_epochs=1.0,
                           finetune_lr=0.1, **GC),
        "dpsgd": dpsgd_train(_mlp(), _data(), eps=50.0, delta=1e-5, group_size=1, epochs=0.5,
                             lr=0.1, clip=0.5, expected_batch_size=8, progress=False),
        "retrain": retrain(_mlp(), _data(), epochs=0.5, lr=0.1, batch_size=10, progress=False),
    }


# ---------------------------------------------------------------------------------------------
# Spawning
# ---------------------------------------------------------------------------------------------

def _init(rank, world, store, timeout=PG_TIMEOUT_S):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout))


def _spawn(target, tmp_path, world=2, join_s=120.0, args=()):
    """Start ``target(rank, world, store, out_dir, *args)`` on ``world`` processes; return exit codes."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    store = str(tmp_path / "store")
    procs = [ctx.Process(target=target, args=(r, world, store, str(tmp_path)) + tuple(args))
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + join_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.exitcode is None:
            p.kill()
            p.join()
    return codes


def _save(out_dir, name, obj):
    torch.save(obj, os.path.join(out_dir, name))


def _outcome(fn):
    """``fn()``'s (weights, certificate) pairs, or the error it raised (reported by the test)."""
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - recorded for the test process
        return f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    if isinstance(out, dict):
        return {k: (flat_params(m), c.to_dict()) for k, (m, c) in out.items()}
    return flat_params(out[0]), out[1].to_dict()


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y))


def _loader_runs():
    """Loaders and iterables under a process group: sharded by the user, or refused."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler
    x, y = _data()
    sampler = DistributedSampler(Pairs(x, y), shuffle=True, seed=3)
    r = distributed.rank()
    return {
        "sharded": _outcome(lambda: unlearn(_mlp(), DataLoader(Pairs(x, y), batch_size=4,
                                                               sampler=sampler),
                                            epochs=1.0, **GC)),
        "shard_iterable": _outcome(lambda: unlearn(_mlp(), _Stream(x[r::2], y[r::2]), steps=4,
                                                   batch_size=6, **GC)),
        "plain_loader": _outcome(lambda: unlearn(_mlp(), DataLoader(Pairs(x, y), batch_size=4),
                                                 steps=2, **GC)),
        "same_iterable": _outcome(lambda: unlearn(_mlp(), _Stream(x, y), steps=2, batch_size=4,
                                                  **GC)),
    }


def _worker_compare(rank, world, store, out_dir):
    import torch.distributed as dist
    _init(rank, world, store)
    distributed.set_check_every(2)
    res = {name: _outcome(fn) for name, fn in SCENARIOS.items()}
    secret = _outcome(_secret_runs)
    _save(out_dir, f"rank{rank}.pt", {"scenarios": res, "secret": secret,
                                      "loaders": _loader_runs(),
                                      "rank": distributed.rank(),
                                      "world": distributed.world_size(),
                                      "writer": distributed.is_writer()})
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The two ranks' results, computed once per test session even under pytest-xdist (the
    workers share the session's base folder; the first one to take the lock spawns the ranks)."""
    import fcntl
    base = tmp_path_factory.getbasetemp()  # under xdist: <session folder>/popen-gwN
    tmp = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "dist-compare"
    tmp.mkdir(exist_ok=True)
    with open(tmp / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (tmp / "codes.json").exists():
            (tmp / "codes.json").write_text(json.dumps(_spawn(_worker_compare, tmp)))
    codes = json.loads((tmp / "codes.json").read_text())
    assert codes == [0, 0], f"ranks exited with {codes}"
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def one_process():
    torch.set_num_threads(1)
    return {name: (flat_params(m), c.to_dict()) for name, (m, c) in
            ((name, fn()) for name, fn in SCENARIOS.items())}


# ---------------------------------------------------------------------------------------------
# 2 ranks == 1 process
# ---------------------------------------------------------------------------------------------

def test_ranks_know_who_they_are(two_ranks):
    assert [r["rank"] for r in two_ranks] == [0, 1]
    assert [r["world"] for r in two_ranks] == [2, 2]
    assert [r["writer"] for r in two_ranks] == [True, False]


def test_sharded_loaders_run_and_unsharded_ones_are_refused(two_ranks):
    """A DataLoader with a DistributedSampler and an IterableDataset that yields each rank its
    own shard run data parallel (the certificate records the global batch); a plain loader and
    an iterable that gives every rank the same samples are refused on every rank."""
    for name in ("sharded", "shard_iterable"):
        got = [r["loaders"][name] for r in two_ranks]
        for g in got:
            assert not isinstance(g, str), g
        assert torch.equal(got[0][0], got[1][0]), "the replicas differ"
        cert = got[0][1]
        assert cert["parameters"]["world_size"] == 2
        assert cert["parameters"]["batch_size"] == (8 if name == "sharded" else 6)
        assert cert["retain_size"] == 24 if name == "sharded" else cert["retain_size"] >= 24
    assert cert_steps(two_ranks[0]["loaders"]["sharded"][1]) == 3  # 12 per rank / 4
    for r in two_ranks:
        assert r["loaders"]["plain_loader"].startswith(
            "ValueError: retain_data: under a process group each rank must read its own part "
            "of every global batch; give this DataLoader a DistributedSampler")
        assert r["loaders"]["same_iterable"].startswith(
            "ValueError: retain_data gives every rank the same batches")


def cert_steps(cert):
    return cert["parameters"]["T"]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_two_ranks_match_one_process(two_ranks, one_process, name):
    for r in (0, 1):
        assert not isinstance(two_ranks[r]["scenarios"][name], str), \
            two_ranks[r]["scenarios"][name]
    w0, cert0 = two_ranks[0]["scenarios"][name]
    w1, cert1 = two_ranks[1]["scenarios"][name]
    ref, cert_ref = one_process[name]
    assert torch.equal(w0, w1), "the replicas differ"
    # the ranks issue their certificates independently: equal but for the clock's second
    assert {**cert0, "created_utc": None} == {**cert1, "created_utc": None}
    # float32 reduction order only: the distributed sums are (sum over each rank) / B
    rel = float((w0.double() - ref.double()).norm() / ref.double().norm())
    assert rel <= 1e-6, f"{name}: relative difference {rel:.3g} from one process"
    # the certificates agree except for the world size, the weights' last bits and the clock
    assert cert0["parameters"].pop("world_size") == 2
    assert cert_ref["parameters"].pop("world_size") == 1
    for c in (cert0, cert_ref):
        for key in ("created_utc", "model_sha256_after"):
            c.pop(key)
    assert cert0 == cert_ref


def test_comparison_is_sharper_than_a_changed_step(one_process):
    """The 1e-6 tolerance above is far below what a wrong gradient scaling would produce."""
    ref = one_process["gc_batch"][0]
    changed = unlearn(_mlp(), _data(), steps=6, batch_size=10, clip="batch", seed=11,
                      **dict(GC, lr=GC["lr"] * (1 + 1e-3)))[0]
    rel = float((flat_params(changed) - ref).norm() / ref.norm())
    assert rel > 1e-4


def test_secret_seeds_are_shared_and_not_user_supplied(two_ranks):
    for r in (0, 1):
        assert not isinstance(two_ranks[r]["secret"], str), two_ranks[r]["secret"]
    for name, (w0, c0) in two_ranks[0]["secret"].items():
        w1, c1 = two_ranks[1]["secret"][name]
        assert torch.equal(w0, w1), name
        assert c0["model_sha256_after"] == c1["model_sha256_after"]
        if name != "retrain":  # retrain has no noise; its flag means "the caller chose a seed"
            assert c0["noise_seed_user_supplied"] is False
        assert "seed" not in json.dumps(c0["parameters"])
    # and they are secret: a second run draws different noise
    assert not torch.equal(two_ranks[0]["secret"]["unlearn"][0],
                           two_ranks[0]["scenarios"]["gc_batch"][0])


# ---------------------------------------------------------------------------------------------
# Replica check, failures
# ---------------------------------------------------------------------------------------------

def _report(out_dir, rank, fn):
    try:
        fn()
        result = ("ok", "")
    except Exception as exc:  # noqa: BLE001 - recorded for the test process
        result = (type(exc).__name__, str(exc) + "\n" + traceback.format_exc())
    _save(out_dir, f"result{rank}.pt", result)
    return result


def _worker_diverge(rank, world, store, out_dir):
    import torch.distributed as dist
    _init(rank, world, store)
    distributed.set_check_every(2)
    model = _mlp()
    calls = [0]

    def nudge(module, inputs):  # forward 1 is the input check, forward k + 1 is step k
        calls[0] += 1
        if rank == 1 and calls[0] == 5:  # step 4: after the check before step 3
            with torch.no_grad():
                p = next(module.parameters()).view(-1)
                p[0] += 0.01  # well above what one noisy step could round away

    model.register_forward_pre_hook(nudge)
    # checks before steps 1, 3, 5, 7: the one before step 5 must fire
    _report(out_dir, f"_run{rank}", lambda: unlearn(model, _data(), steps=8, batch_size=10,
                                                    clip="batch", seed=1, inplace=True, **GC))

    def direct():
        t = torch.linspace(-1, 1, 1000)
        distributed.check_replicas(t)  # equal: passes
        if rank == 0:
            t[500] = torch.nextafter(t[500], torch.tensor(2.0))
        distributed.check_replicas(t, "the test tensor")

    _report(out_dir, f"_direct{rank}", direct)
    _report(out_dir, f"_data{rank}", lambda: unlearn(_mlp(), _data(seed=rank), steps=2, seed=1,
                                                     **GC))
    _report(out_dir, f"_train{rank}", lambda: retrain(_mlp(), _data(n=24 + rank), epochs=1.0,
                                                      lr=0.1, seed=1, progress=False))

    def alone():  # rank 1 never calls: without local_only, rank 0 would wait for it
        if rank == 0:
            with distributed.local_only():
                assert not distributed.active() and distributed.world_size() == 1
                _, cert = unlearn(_mlp(), _data(), steps=3, batch_size=10, finetune_epochs=0.5,
                                  finetune_lr=0.1, seed=1, **GC)
                assert cert.parameters["world_size"] == 1
            assert distributed.active() and distributed.world_size() == 2
        dist.barrier()

    _report(out_dir, f"_alone{rank}", alone)
    dist.destroy_process_group()


def test_replica_check_fires_when_one_rank_is_perturbed_or_given_other_data(tmp_path):
    assert _spawn(_worker_diverge, tmp_path) == [0, 0]
    for rank in (0, 1):
        kind, msg = torch.load(tmp_path / f"result_run{rank}.pt", weights_only=False)
        assert kind == "ReplicaDivergenceError", msg
        assert "before noisy step 5" in msg
        kind, msg = torch.load(tmp_path / f"result_direct{rank}.pt", weights_only=False)
        assert kind == "ReplicaDivergenceError" and "the test tensor differ" in msg, msg
        kind, msg = torch.load(tmp_path / f"result_alone{rank}.pt", weights_only=False)
        assert kind == "ok", msg
        for name in ("data", "train"):  # ranks given different data sets
            kind, msg = torch.load(tmp_path / f"result_{name}{rank}.pt", weights_only=False)
            assert kind == "ReplicaDivergenceError", msg
            assert "the data sets given to the ranks differ" in msg


DIE_TIMEOUT_S = 3.0


def _worker_die(rank, world, store, out_dir, mode):
    import torch.distributed as dist
    from torch.distributed import distributed_c10d
    _init(rank, world, store)  # a long timeout for the start-up, whatever the machine's load
    dist.barrier()
    distributed_c10d._set_pg_timeout(datetime.timedelta(seconds=DIE_TIMEOUT_S))

    def loss(out, y):
        loss.calls += 1
        if rank == 1 and loss.calls == 3:
            (Path(out_dir) / "failed_at").write_text(repr(time.time()))
            if mode == "kill":
                os._exit(7)
            raise RuntimeError("rank 1 fails on purpose")
        return F.cross_entropy(out, y)
    loss.calls = 0
    try:
        m, cert = unlearn(_mlp(), _data(), steps=8, batch_size=10, clip="batch", seed=1,
                          loss_fn=loss, **GC)
        cert.save(os.path.join(out_dir, f"certificate{rank}.json"))
    except Exception as exc:  # noqa: BLE001
        _save(out_dir, f"error{rank}.pt", (type(exc).__name__, str(exc), time.time()))
        if mode == "raise" and rank == 1:  # stay alive, holding the group open, until rank 0
            until = time.monotonic() + 30.0  # has given up on its own (its timeout)
            while time.monotonic() < until and not os.path.exists(
                    os.path.join(out_dir, "error0.pt")):
                time.sleep(0.1)
        # as a script should (docs/training.md): a gloo group left alive after its peer died
        # can abort the process at exit, which would hide the exit code this test reads
        dist.destroy_process_group()
        sys.exit(3)


@pytest.mark.parametrize("mode", ["kill", "raise"])
def test_a_failing_rank_stops_the_others_without_certificate(tmp_path, mode):
    codes = _spawn(_worker_die, tmp_path, join_s=60.0, args=(mode,))
    if mode == "kill":
        assert codes[1] == 7
    assert codes[0] == 3, f"rank 0 exited with {codes[0]} (None: still running after 60 s)"
    kind, msg, stopped_at = torch.load(tmp_path / "error0.pt", weights_only=False)
    assert kind == "DistributedError", msg
    assert "no certificate" in msg and "rank 0 of 2" in msg
    # rank 0 gave up within the process group's timeout of rank 1's failure (plus the time to
    # reach its next collective)
    waited = stopped_at - float((tmp_path / "failed_at").read_text())
    assert 0 < waited < DIE_TIMEOUT_S + 2.5, waited
    assert not any(p.name.startswith("certificate") for p in tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# Without a process group, and the pure helpers
# ---------------------------------------------------------------------------------------------

def test_outside_a_group_everything_is_the_single_process_path():
    assert not distributed.active()
    assert (distributed.rank(), distributed.world_size(), distributed.is_writer()) == (0, 1, True)
    assert distributed.from_rank0(-5) == -5 and distributed.from_rank0(2 ** 64 - 1) == 2 ** 64 - 1
    source = object()
    assert distributed.gradient_source(source, None) is source
    distributed.check_replicas(torch.zeros(3))  # no-op
    s = distributed.noise_stream(7)
    assert s.seed == 7 and s.seed_is_user_supplied
    assert not distributed.noise_stream().seed_is_user_supplied
    assert distributed.device() is None


@settings(max_examples=examples(60), deadline=None)
@given(batch=st.integers(0, 300), world=st.integers(1, 9))
def test_local_ranges_partition_the_batch(batch, world):
    ranges = [distributed.local_range(batch, r, world) for r in range(world)]
    assert ranges[0][0] == 0 and ranges[-1][1] == batch
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=examples(40), deadline=None)
@given(n=st.integers(1, 3000), i=st.data(), dtype=st.sampled_from(
    [torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.uint8]))
def test_checksum_sees_a_one_bit_change_and_a_swap(n, i, dtype):
    t = (torch.arange(n, dtype=torch.float64) * 0.37).to(dtype)
    c = distributed.checksum(t)
    assert torch.equal(c, distributed.checksum(t.clone()))
    words = t.clone().view(torch.uint8)
    k = i.draw(st.integers(0, words.numel() - 1))
    bit = i.draw(st.integers(0, 7))
    words[k] ^= (1 << bit)
    assert not torch.equal(c, distributed.checksum(words.view(dtype)))
    if n >= 2:
        a, b = i.draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
        if t[a] != t[b]:
            swapped = t.clone()
            swapped[a], swapped[b] = t[b], t[a]
            assert not torch.equal(c, distributed.checksum(swapped))


def test_checksum_matches_an_independent_computation():
    t = torch.tensor([1.0, -2.5, 3.25e-7], dtype=torch.float32)
    words = [int.from_bytes(t.numpy().tobytes()[j:j + 2], "little") for j in range(0, 12, 2)]
    expected = [6, sum(words), sum(w * (j + 1) for j, w in enumerate(words))]
    assert distributed.checksum(t).tolist() == expected


@pytest.mark.parametrize("value,message", [
    ("0", "must be a number of seconds > 0"), ("-3", "> 0"), ("nan", "> 0"), ("x", "got 'x'")])
def test_bad_timeouts_are_one_value_error(monkeypatch, value, message):
    with pytest.raises(ValueError, match=message):
        distributed.timeout_from(value)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=distributed.TIMEOUT_ENV):
        distributed.timeout_from()


def test_timeout_sources(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout_from() == distributed.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "12.5")
    assert distributed.timeout_from() == 12.5 and distributed.timeout_from(3) == 3.0


def test_check_every_settings(monkeypatch):
    monkeypatch.delenv(distributed.CHECK_EVERY_ENV, raising=False)
    assert distributed.check_every() == 50
    monkeypatch.setenv(distributed.CHECK_EVERY_ENV, "7")
    assert distributed.check_every() == 7
    distributed.set_check_every(3)
    try:
        assert distributed.check_every() == 3
    finally:
        distributed.set_check_every(None)
    monkeypatch.setenv(distributed.CHECK_EVERY_ENV, "0")
    with pytest.raises(ValueError, match="CERTUNLEARN_DIST_CHECK_EVERY must be an integer >= 1"):
        distributed.check_every()
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="check_every must be an integer >= 1"):
            distributed.set_check_every(bad)


def test_init_from_env_is_a_no_op_for_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env() is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env(5) is False


# ---------------------------------------------------------------------------------------------
# The command line under torchrun
# ---------------------------------------------------------------------------------------------

def test_torchrun_cli_unlearn_writes_one_certificate_from_rank0(tmp_path):
    from certunlearn_train.certificates import RunCertificate
    from certunlearn_train.cli import main
    from certunlearn_train.model_files import model_arch, save_model_file
    from certunlearn_train.models import MLP
    torch.manual_seed(0)
    save_model_file(str(tmp_path / "original.pt"), MLP(64, 10, (16,)),
                    model_arch("mlp", (1, 8, 8), 10, {"name": "digits"}, hidden=(16,)))
    cfg = {"model_file": str(tmp_path / "original.pt"), "out": str(tmp_path / "out"),
           "forget_fraction": 0.1, "C0": 0.01, "C1": 0.02, "lr": 0.05, "steps": 6,
           "clip": "per_sample", "seed": 5, "threads": 1}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", CERTUNLEARN_DIST_TIMEOUT="60")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "certunlearn_train.cli", "unlearn", "--config", str(tmp_path / "config.json"),
         "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["certificate.json",
                                                                     "ledger.json", "model.pt"]
    cert = RunCertificate.load(str(tmp_path / "out" / "certificate.json"))
    assert cert.parameters["world_size"] == 2 and cert.parameters["clip"] == "per_sample"
    assert main(["verify", str(tmp_path / "out" / "certificate.json"),
                 str(tmp_path / "out" / "model.pt")]) == 0


def test_cli_refuses_a_bad_timeout(tmp_path, capsys, monkeypatch):
    from certunlearn_train.cli import main
    assert main(["unlearn", "--config", str(tmp_path / "missing.json"),
                 "--dist-timeout", "-1"]) == 2
    assert "--dist-timeout: must be a finite number > 0, got '-1'" in capsys.readouterr().err
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "0")
    assert main(["unlearn", "--config", str(tmp_path / "missing.json")]) == 2
    assert f"{distributed.TIMEOUT_ENV} must be a number of seconds > 0, got '0'" \
        in capsys.readouterr().err


def test_init_from_env_reports_a_rank_that_never_comes(monkeypatch):
    import socket

    import torch.distributed as dist
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(port)).items():
        monkeypatch.setenv(k, v)
    with pytest.raises(distributed.DistributedError, match="cannot initialise the process group"):
        distributed.init_from_env(1.0)
    assert not dist.is_initialized()

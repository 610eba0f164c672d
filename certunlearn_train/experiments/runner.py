"""Resumable experiment runner: tune every method on validation data, then run it over seeds.

Work is split into *units*: one (method, configuration, seed, eps, delta) run, from the deletion
request to the end of the epoch budget, evaluated after the noisy phase and after every epoch.
Each finished unit is written atomically to ``OUT/units/<key>.json``, where ``key`` hashes the
unit's full configuration (data, model, original training, method, knobs, seed, eps, delta,
budget); a unit whose file exists is read back, never recomputed, so a killed run resumes where it
stopped. The original model of each seed is cached the same way in ``OUT/originals/``.

Seeds: each evaluation seed draws its own forget set, original model, initialisations, batch
orders and noise; all methods share the seed's forget set and original model (a paired
comparison). Tuning runs on ``tune_seeds``, disjoint from the evaluation seeds, and ranks
configurations by :func:`validation_score` on the validation split only.

Every run's certificate is written to ``OUT/certificates/<key>.json``, with the model it binds in
``<key>.pt``, and verified (:meth:`RunCertificate.verify`, against the weights it certifies)
before the unit is recorded; the unit records the certificate file's SHA-256. Every summary,
including one written from reused units, verifies each stored certificate again against its
model and that hash, so a certificate or model edited on disk stops the run.
The unlearning noise is seeded from the experiment seed so that a run can be reproduced: those
certificates record ``noise_seed_user_supplied = true`` (a reproduction, not a private release).
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .metrics import validation_score
from .presets import CERTIFIED, METHOD_NAMES, method_configs

__all__ = ["Experiment", "unit_key", "derive_seed", "FORMAT"]

FORMAT = "certunlearn.experiment-unit/1"


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def unit_key(spec: Dict[str, Any]) -> str:
    """Hex key of a unit: SHA-256 of its canonical JSON configuration (first 24 characters)."""
    return hashlib.sha256(_canonical(spec).encode()).hexdigest()[:24]


def derive_seed(*parts) -> int:
    """A 31-bit seed derived from the parts (stable across runs and platforms)."""
    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def _atomic_json(path: str, obj) -> None:
    from ..certificates import atomic_write_bytes
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


class _Data:
    """The splits of one experiment, as tensors on the device; forget sets per seed.

    With ``transfer`` (``public_classes`` and ``private`` parameter names), the images of the
    public classes train the backbone and are then set aside: training, validation, test and
    forget sets hold the other (private) classes only.
    """

    def __init__(self, cfg, device):
        import numpy as np

        from ..data import BUNDLED, load_dataset, train_test_split
        d = cfg["data"]
        kwargs = {}
        if d["name"] in BUNDLED:
            kwargs = dict(test_fraction=d["test_fraction"], split_seed=d["split_seed"])
        train, test = load_dataset(d["name"], d.get("root"), **kwargs)
        tr = cfg.get("transfer")
        self.public_train = None
        self.private = None
        if tr:
            pub = np.isin(train.y, tr["public_classes"])
            self.public_train = train.subset(np.flatnonzero(pub))
            train = train.subset(np.flatnonzero(~pub))
            test = test.subset(np.flatnonzero(~np.isin(test.y, tr["public_classes"])))
            self.private = list(tr["private"])
        self.train, self.val = train_test_split(train, test_fraction=d["val_fraction"],
                                                seed=d["split_seed"] + 1)
        self.test = test
        self.device = device
        self.cfg = cfg
        self.input_shape = tuple(self.train.x.shape[1:])
        self.num_classes = self.train.num_classes
        self.val_t = self.val.tensors(device)
        self.test_t = self.test.tensors(device)
        self._split_cache = {}

    def split(self, seed: int):
        """(retain, forget, full training) tensors for ``seed`` (its own forget set)."""
        if seed not in self._split_cache:
            from ..data import select_forget, split_forget
            idx = select_forget(self.train.y, fraction=self.cfg["data"]["forget_fraction"],
                                seed=derive_seed("forget", seed))
            retain, forget = split_forget(self.train, idx)
            self._split_cache = {seed: (retain.tensors(self.device), forget.tensors(self.device),
                                        self.train.tensors(self.device))}
        return self._split_cache[seed]

    def private_parameters(self, model):
        """The parameters a run may change: all, or the ``private`` ones of a transfer set-up."""
        if self.private is None:
            return list(model.parameters())
        named = dict(model.named_parameters())
        return [named[n] for n in self.private]

    def public_record(self, model) -> Dict[str, Any]:
        """``public_parameters=...`` for a certificate built here (empty without transfer)."""
        if self.private is None:
            return {}
        from ..unlearn import public_record
        pub = [n for n, _ in model.named_parameters() if n not in set(self.private)]
        return {"public_parameters": public_record(model, pub)}


class Experiment:
    """One experiment (a validated configuration from :mod:`.presets`) writing into ``out``."""

    def __init__(self, cfg: Dict[str, Any], out: str, *, progress: bool = True,
                 echo: Callable[[str], None] = print):
        self.cfg = cfg
        self.out = out
        self.progress = progress
        self.echo = echo
        self.computed = 0
        self.reused = 0
        for sub in ("units", "originals", "certificates", "figures"):
            os.makedirs(os.path.join(out, sub), exist_ok=True)
        self._data: Optional[_Data] = None
        self._originals: Dict[Any, Any] = {}

    # ------------------------------------------------------------------------------------------
    # set-up
    # ------------------------------------------------------------------------------------------
    @property
    def device(self):
        import torch
        dev = self.cfg.get("device", "cpu")
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(dev)

    @property
    def data(self) -> _Data:
        if self._data is None:
            self._data = _Data(self.cfg, self.device)
        return self._data

    def _shared_spec(self) -> Dict[str, Any]:
        c = self.cfg
        return {"data": c["data"], "model": c["model"], "original": c["original"],
                "epochs": c["epochs"], "transfer": c.get("transfer"), "format": FORMAT}

    def _build_model(self, seed_tag):
        import torch

        from ..models import build_model
        kwargs = {k: tuple(v) if isinstance(v, list) else v
                  for k, v in self.cfg["model"].get("kwargs", {}).items()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(*seed_tag))
            model = build_model(self.cfg["model"]["name"], self.data.input_shape,
                                self.data.num_classes, **kwargs)
        return model.to(self.device)

    def original(self, seed: int):
        """The model trained on the full training split of ``seed`` (cached on disk)."""
        if seed in self._originals:
            return self._originals[seed]
        import torch

        from ..certificates import atomic_write_bytes
        from ..train import train
        spec = dict(self._shared_spec(), kind="original", seed=seed)
        key = unit_key(spec)
        path = os.path.join(self.out, "originals", key + ".pt")
        model = self._build_model(("original-init", seed))
        if os.path.exists(path):
            model.load_state_dict(torch.load(path, map_location=self.device))
        else:
            o = self.cfg["original"]
            _, _, full = self.data.split(seed)
            params = None
            if self.data.private is not None:
                model.load_state_dict(self.backbone().state_dict())
                params = self.data.private_parameters(model)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(derive_seed("original-head", seed))
                    for m in model.modules():  # a fresh head on the frozen public backbone
                        if any(p is q for p in m.parameters(recurse=False) for q in params):
                            m.reset_parameters()
            train(model, full, epochs=o["epochs"], lr=o["lr"], batch_size=o["batch_size"],
                  seed=derive_seed("original-batches", seed), parameters=params,
                  progress=False)
            buf = io.BytesIO()
            torch.save(model.state_dict(), buf)
            atomic_write_bytes(path, buf.getvalue())
        self._originals = {seed: model}
        return model

    def backbone(self):
        """Transfer set-ups: the whole model trained on the public classes (cached on disk);
        its non-private parameters are the frozen public backbone of every run."""
        import torch

        from ..certificates import atomic_write_bytes
        from ..train import train
        spec = dict(self._shared_spec(), kind="backbone")
        path = os.path.join(self.out, "originals", unit_key(spec) + ".pt")
        model = self._build_model(("backbone-init",))
        if os.path.exists(path):
            model.load_state_dict(torch.load(path, map_location=self.device))
            return model
        tr = self.cfg["transfer"]
        train(model, self.data.public_train.tensors(self.device), epochs=tr["backbone_epochs"],
              lr=self.cfg["original"]["lr"], batch_size=self.cfg["original"]["batch_size"],
              seed=derive_seed("backbone-batches"), progress=False)
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        atomic_write_bytes(path, buf.getvalue())
        return model

    # ------------------------------------------------------------------------------------------
    # units
    # ------------------------------------------------------------------------------------------
    def unit_spec(self, method, config, seed, eps) -> Dict[str, Any]:
        spec = dict(self._shared_spec(), kind="unit", method=method, config=config, seed=seed)
        if method in CERTIFIED:
            spec.update(eps=float(eps), delta=float(self.cfg["delta"]))
        return spec

    def run_unit(self, spec) -> Dict[str, Any]:
        """The unit's record: read from disk if it finished before, else computed and written."""
        key = unit_key(spec)
        path = os.path.join(self.out, "units", key + ".json")
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as fh:
                    rec = json.load(fh)
            except (OSError, ValueError):
                rec = {}  # unreadable (written by something else): computed again
            if isinstance(rec, dict) and rec.get("key") == key:
                self.reused += 1
                return rec
        rec = self._compute(spec, key)
        _atomic_json(path, rec)
        self.computed += 1
        return rec

    def _evaluate(self, model) -> Dict[str, float]:
        from ..evaluate import accuracy
        return {"test_acc": accuracy(model, *self.data.test_t),
                "val_acc": accuracy(model, *self.data.val_t)}

    def _save_cert(self, cert, key, model) -> str:
        """Write the certificate and the model it binds together (``certificates/<key>.json``
        and ``.pt``, a model file ``certunlearn verify`` reads), after verifying them."""
        from ..files import write_together
        from ..model_files import model_arch, model_file_bytes
        cert.verify(model, allow_unverifiable=True)
        rel = os.path.join("certificates", key + ".json")
        kwargs = {k: tuple(v) if isinstance(v, list) else v
                  for k, v in self.cfg["model"].get("kwargs", {}).items()}
        arch = model_arch(self.cfg["model"]["name"], self.data.input_shape,
                          self.data.num_classes, {"name": self.cfg["data"].get("name")},
                          **kwargs)
        write_together([(os.path.join(self.out, rel[:-len(".json")] + ".pt"),
                         model_file_bytes(model, arch)),
                        (os.path.join(self.out, rel), (cert.to_json() + "\n").encode())])
        return rel

    def _compute(self, spec, key) -> Dict[str, Any]:
        """Run one unit: the method's work after the request, evaluated after the noisy phase
        (or at the start) and after every pass of noise-free training."""
        import torch

        from ..baselines import dpsgd_train, output_perturbation, reinitialize_, retrain
        from ..certificates import build_run_certificate, weights_sha256
        from ..train import train
        from ..unlearn import unlearn
        method, cfg, seed = spec["method"], spec["config"], spec["seed"]
        retain, forget, full = self.data.split(seed)
        n_retain, n_forget = len(retain[1]), len(forget[1])
        E = self.cfg["epochs"]
        private = self.data.private
        rec = {"key": key, "spec": spec, "method": method, "seed": seed,
               "eps": spec.get("eps"), "delta": spec.get("delta"), "config": cfg,
               "status": "ok", "error": None, "noisy_epochs": 0.0, "certificate": None,
               "certified_epsilon": None, "certified_delta": None, "sigma": None,
               "n_retain": n_retain, "n_forget": n_forget}
        times = {"pre_request_s": 0.0, "noisy_s": 0.0, "train_s": 0.0}
        points: List[Dict[str, Any]] = []
        clock: Dict[str, Optional[float]] = {"t0": 0.0, "eval": 0.0, "noisy_end": None}
        start_epochs = [0.0]

        def point(model, epochs, phase):
            t = time.perf_counter()
            wall = t - clock["t0"] - clock["eval"]
            points.append(dict(self._evaluate(model), epochs=epochs, wall_s=wall, phase=phase))
            clock["eval"] += time.perf_counter() - t

        def after_noisy(model):
            clock["noisy_end"] = time.perf_counter() - clock["t0"] - clock["eval"]
            point(model, start_epochs[0], "noisy")

        def per_epoch(i, model):
            point(model, start_epochs[0] + i + 1, "train")

        def start():
            clock.update(t0=time.perf_counter(), eval=0.0, noisy_end=None)

        def stop():
            return time.perf_counter() - clock["t0"] - clock["eval"]

        noise_seed = derive_seed(seed, method, "noise", _canonical(cfg))
        train_seed = derive_seed(seed, method, "train", _canonical(cfg))
        common = dict(forget_size=n_forget, private=private, progress=False)
        try:
            if method in ("gradient_clipping", "model_clipping"):
                kw = dict(C0=cfg["C0"], lr=cfg["noisy_lr"], lam=cfg["lam"], steps=cfg["steps"],
                          batch_size=cfg["noisy_batch"], clip="batch")
                if method == "gradient_clipping":
                    kw["C1"] = (cfg["C0"] / (cfg["noisy_lr"] * cfg["steps"])
                                if cfg["C1"] == "natural" else cfg["C1"])
                else:
                    kw["C2"] = cfg["C2"]
                start_epochs[0] = cfg["steps"] * min(cfg["noisy_batch"], n_retain) / n_retain
                rec["noisy_epochs"] = start_epochs[0]
                original = self.original(seed)
                start()
                model, cert = unlearn(
                    original, retain, eps=spec["eps"], delta=spec["delta"], method=method,
                    finetune_epochs=E, finetune_lr=cfg["lr"],
                    finetune_batch_size=cfg["batch_size"], seed=noise_seed,
                    after_noisy_phase=after_noisy, epoch_callback=per_epoch, **common, **kw)
                total = stop()
                noisy_end = clock["noisy_end"]
                assert noisy_end is not None  # set by after_noisy, which unlearn() always calls
                times["noisy_s"] = noisy_end
                times["train_s"] = total - noisy_end
            elif method == "output_perturbation":
                original = self.original(seed)
                op = dict(eps=spec["eps"], delta=spec["delta"], C0=cfg["C0"], seed=noise_seed,
                          batch_size=cfg["batch_size"], **common)
                start()
                noisy, _ = output_perturbation(original, retain, **op)  # same noise, no training
                times["noisy_s"] = stop()
                point(noisy, 0.0, "noisy")
                del noisy
                start()
                model, cert = output_perturbation(original, retain, finetune_epochs=E,
                                                  finetune_lr=cfg["lr"],
                                                  epoch_callback=per_epoch, **op)
                times["train_s"] = max(stop() - times["noisy_s"], 0.0)
                for p in points[1:]:
                    p["wall_s"] += times["noisy_s"]
            elif method == "dpsgd_group":
                # trained before the request with DP-SGD on the full training set (retain and
                # forget), private for groups of the forget set's size; fine-tuned on the retain
                # set after the request (post-processing)
                start()
                dp_model, cert = dpsgd_train(
                    self.original(seed), full, eps=spec["eps"], delta=spec["delta"],
                    group_size=n_forget, epochs=cfg["dp_epochs"], lr=cfg["dp_lr"],
                    clip=cfg["clip"], expected_batch_size=cfg["dp_batch"], seed=noise_seed,
                    private=private, progress=False)
                times["pre_request_s"] = stop()
                rec["certificate"] = self._save_cert(cert, key, dp_model)
                rec["certificate_sha256"] = _file_sha256(os.path.join(self.out,
                                                                      rec["certificate"]))
                rec.update(certified_epsilon=cert.epsilon, certified_delta=cert.delta,
                           sigma=cert.sigma)
                cert = None
                model = dp_model
                start()
                point(model, 0.0, "noisy")
                train(model, retain, epochs=E, lr=cfg["lr"], batch_size=cfg["batch_size"],
                      seed=train_seed, epoch_callback=per_epoch,
                      parameters=self.data.private_parameters(model), progress=False)
                times["train_s"] = stop()
            elif method == "retrain":
                start()
                model, cert = retrain(self.original(seed), retain, epochs=E, lr=cfg["lr"],
                                      batch_size=cfg["batch_size"], seed=train_seed,
                                      epoch_callback=per_epoch, **common)
                times["train_s"] = stop()
            else:  # retrain_init_scale: the control
                original = self.original(seed)
                model = reinitialize_(copy.deepcopy(original), train_seed, private)
                params = self.data.private_parameters(model)
                with torch.no_grad():
                    for p in params:
                        p.mul_(cfg["init_scale"])
                start()
                point(model, 0.0, "init")
                train(model, retain, epochs=E, lr=cfg["lr"], batch_size=cfg["batch_size"],
                      seed=train_seed, epoch_callback=per_epoch, parameters=params,
                      progress=False)
                times["train_s"] = stop()
                cert = build_run_certificate(
                    method="retrain", sigma=None, eps=0.0, delta=0.0,
                    parameters=dict(steps=None, epochs=float(E), lr=float(cfg["lr"]),
                                    batch_size=int(cfg["batch_size"])),
                    retain_size=n_retain, forget_size=n_forget,
                    sha_before=weights_sha256(original), sha_after=weights_sha256(model),
                    seed_user_supplied=True, **self.data.public_record(model))
        except ValueError as exc:
            # e.g. the accountant cannot reach (eps, delta) with these knobs, or the run
            # diverged: recorded, scored -inf, never chosen while another configuration works
            rec.update(status="infeasible", error=str(exc).splitlines()[0][:500], points=[],
                       times=times)
            return rec
        if cert is not None:
            rec["certificate"] = self._save_cert(cert, key, model)
            rec["certificate_sha256"] = _file_sha256(os.path.join(self.out, rec["certificate"]))
            rec.update(certified_epsilon=cert.epsilon, certified_delta=cert.delta,
                       sigma=cert.sigma)
        points.sort(key=lambda p: p["epochs"])
        rec["points"] = points
        rec["times"] = times
        return rec

    # ------------------------------------------------------------------------------------------
    # the whole experiment
    # ------------------------------------------------------------------------------------------
    def _groups(self):
        """(method, eps) pairs to tune and report; eps is None for the exact methods."""
        out = []
        for method in METHOD_NAMES:
            if method in CERTIFIED:
                out += [(method, e) for e in self.cfg["eps"]]
            else:
                out.append((method, None))
        return out

    def plan(self) -> Tuple[int, int]:
        """(tuning units, evaluation units)."""
        groups = self._groups()
        if not self.cfg["tune_each_eps"]:
            n_tune = sum(1 for m, e in groups if e is None or e == self.cfg["main_eps"])
        else:
            n_tune = len(groups)
        return (n_tune * self.cfg["n_configs"] * len(self.cfg["tune_seeds"]),
                len(groups) * self.cfg["seeds"])

    def run(self) -> Dict[str, Any]:
        """Tune, evaluate, summarise; write every output; return the summary.

        Runs with ``threads`` torch threads when the configuration sets them (restored after).
        """
        import torch
        threads = torch.get_num_threads()
        if self.cfg.get("threads"):
            torch.set_num_threads(int(self.cfg["threads"]))
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> Dict[str, Any]:
        from tqdm.auto import tqdm

        from .summary import write_outputs
        _atomic_json(os.path.join(self.out, "experiment.json"), self.cfg)
        n_tune, n_eval = self.plan()
        bar = tqdm(total=n_tune + n_eval, desc=f"experiment {self.cfg.get('name', '')}",
                   unit="unit", disable=not self.progress)
        t_start = time.perf_counter()
        tuning: List[Dict[str, Any]] = []
        chosen: Dict[str, Dict[str, Any]] = {}
        E = self.cfg["epochs"]
        for method, eps in self._groups():
            tune_eps = eps if (eps is None or self.cfg["tune_each_eps"]) else self.cfg["main_eps"]
            gkey = _group_name(method, eps)
            if not self.cfg["tune_each_eps"] and eps is not None and eps != self.cfg["main_eps"]:
                continue  # filled in below from the main eps's choice
            best: Optional[Tuple[float, int, Dict[str, Any]]] = None
            for i, config in enumerate(method_configs(self.cfg, method)):
                scores = []
                for ts in self.cfg["tune_seeds"]:
                    rec = self.run_unit(self.unit_spec(method, config, ts, tune_eps))
                    bar.update(1)
                    scores.append(validation_score(rec["points"], E)
                                  if rec["status"] == "ok" else -math.inf)
                score = float(sum(scores) / len(scores))
                tuning.append({"method": method, "eps": eps, "config_index": i,
                               "config": config, "val_score": score,
                               "status": "ok" if math.isfinite(score) else "infeasible"})
                if best is None or score > best[0]:
                    best = (score, i, config)
            assert best is not None  # every method has at least one configuration
            chosen[gkey] = {"method": method, "eps": eps, "config_index": best[1],
                            "config": best[2], "val_score": best[0]}
        if not self.cfg["tune_each_eps"]:
            for method, eps in self._groups():
                g = _group_name(method, eps)
                if g not in chosen:
                    main = chosen[_group_name(method, self.cfg["main_eps"])]
                    chosen[g] = dict(main, eps=eps)
        results: List[Dict[str, Any]] = []
        for method, eps in self._groups():
            sel = chosen[_group_name(method, eps)]
            for seed in range(self.cfg["seeds"]):
                rec = self.run_unit(self.unit_spec(method, sel["config"], seed, eps))
                bar.update(1)
                results.append(rec)
        bar.close()
        stats = {"computed_units": self.computed, "reused_units": self.reused,
                 "wall_s": time.perf_counter() - t_start}
        _atomic_json(os.path.join(self.out, "run_stats.json"), stats)
        summary = write_outputs(self.out, self.cfg, tuning, chosen, results, echo=self.echo)
        self.echo(f"units: {self.computed} computed, {self.reused} reused from {self.out}/units")
        return summary


def _file_sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _group_name(method, eps) -> str:
    return method if eps is None else f"{method}@{eps:g}"

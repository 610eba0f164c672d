"""Unlearning certificates: an immutable, auditable record of a guarantee and how it was derived.

A :class:`Certificate` holds the method, every parameter, the noise sigma, the guarantee
(eps, delta), the derivation (gradient clipping: rho_PABI, the horizon tau, Z_tau, S_tau and the
optimal Renyi order; model clipping: the ln delta_t trajectory; output perturbation: the noise
ratio; DP-SGD: the per-example guarantee and the orders) and the library version.

* ``to_json()`` / ``Certificate.from_json(s)`` and ``to_dict()`` / ``from_dict(d)`` round-trip
  losslessly: floats are written by ``repr`` (the shortest string that reads back to the same
  double), so every number survives exactly.
* ``verify()`` recomputes the guarantee with the accountant and raises ``ValueError`` naming the
  first number that does not reproduce (or the claim the accountant cannot certify).

Build certificates with :func:`issue_certificate` (unlearning methods) and
:func:`issue_dpsgd_certificate` (the DP-SGD group-privacy baseline).
"""
from __future__ import annotations

import copy
import json
import math
import numbers
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from mpmath import mpf

from ._numerics import check_delta, check_epsilon, entry_point, is_sequence, to_float
from .amplification import pabi_bound
from .calibration import METHODS, epsilon_for
from .dpsgd import dpsgd_bound
from .errors import InvalidParameterError
from .model_clipping import model_clipping_bound, model_clipping_epsilon
from .renyi import RenyiCurve, renyi_to_dp

__all__ = ["Certificate", "issue_certificate", "issue_dpsgd_certificate", "CERTIFICATE_METHODS"]

CERTIFICATE_METHODS = METHODS + ("dpsgd_group",)
_FORMAT = "certunlearn-certificate/1"
_REL_TOL = 1e-9  # recomputed derivation numbers must agree to this relative tolerance


def _version() -> str:
    from .version import __version__
    return __version__


def _plain(value):
    """JSON-ready deep copy: mpf -> float, tuples -> lists, mappings -> dicts (string keys)."""
    if isinstance(value, mpf):
        return float(value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or is_sequence(value):
        return [_plain(v) for v in value]
    raise InvalidParameterError(f"cannot record a value of type {type(value).__name__} "
                                f"in a certificate: {value!r}")


def _freeze(value):
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value):
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True, eq=False)
class Certificate:
    """An (eps, delta)-unlearning certificate (immutable).

    Attributes:
        method: one of ``CERTIFICATE_METHODS``.
        parameters: every input of the bound (read-only mapping).
        sigma: the per-step noise std (DP-SGD: the noise multiplier).
        eps: epsilon of the guarantee (>= the accountant's value, which is rounded up).
        delta: delta of the guarantee.
        derivation: how the accountant got there (read-only mapping).
        version: the library version that issued it.
    """
    method: str
    parameters: Mapping[str, Any]
    sigma: float
    eps: float
    delta: float
    derivation: Mapping[str, Any] = field(default_factory=dict)
    version: str = ""

    def __post_init__(self):
        if self.method not in CERTIFICATE_METHODS:
            raise InvalidParameterError(f"method must be one of {', '.join(CERTIFICATE_METHODS)}, "
                                        f"got {self.method!r}")
        object.__setattr__(self, "parameters", _freeze(_plain(dict(self.parameters))))
        object.__setattr__(self, "derivation", _freeze(_plain(dict(self.derivation))))
        for name in ("sigma", "eps", "delta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (numbers.Real, mpf)):
                raise InvalidParameterError(f"certificate {name} must be a number, got {v!r}")
            object.__setattr__(self, name, float(v))
        if not isinstance(self.version, str):
            raise InvalidParameterError(f"version must be a string, got {self.version!r}")

    # serialisation ------------------------------------------------------------------------------
    @entry_point
    def to_dict(self) -> dict:
        """A plain, JSON-ready dict (a deep copy)."""
        return {"format": _FORMAT, "method": self.method, "parameters": _thaw(self.parameters),
                "sigma": self.sigma, "eps": self.eps, "delta": self.delta,
                "derivation": _thaw(self.derivation), "version": self.version}

    @classmethod
    @entry_point
    def from_dict(cls, data: Mapping) -> "Certificate":
        """Rebuild a certificate from :meth:`to_dict` output (clear errors for missing keys)."""
        if not isinstance(data, Mapping):
            raise InvalidParameterError(f"a certificate must be a mapping, got {type(data).__name__}")
        fmt = data.get("format", _FORMAT)
        if fmt != _FORMAT:
            raise InvalidParameterError(f"unknown certificate format {fmt!r} (expected {_FORMAT!r})")
        missing = [k for k in ("method", "parameters", "sigma", "eps", "delta") if k not in data]
        if missing:
            raise InvalidParameterError(f"certificate is missing {', '.join(missing)}")
        if not isinstance(data["parameters"], Mapping):
            raise InvalidParameterError("certificate parameters must be a mapping")
        return cls(method=data["method"], parameters=copy.deepcopy(dict(data["parameters"])),
                   sigma=data["sigma"], eps=data["eps"], delta=data["delta"],
                   derivation=copy.deepcopy(dict(data.get("derivation", {}))),
                   version=data.get("version", ""))

    @entry_point
    def to_json(self, **kwargs) -> str:
        """JSON text; floats are written with ``repr`` so they read back exactly."""
        kwargs.setdefault("indent", 2)
        kwargs.setdefault("sort_keys", True)
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    @entry_point
    def from_json(cls, text: str) -> "Certificate":
        """Parse :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise InvalidParameterError(f"certificate is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def __eq__(self, other):
        if not isinstance(other, Certificate):
            return NotImplemented
        return self.to_json() == other.to_json()

    def __hash__(self):
        return hash(self.to_json())

    # verification -------------------------------------------------------------------------------
    @entry_point
    def verify(self) -> "Certificate":
        """Recompute the guarantee; raise ``ValueError`` with the reason if it does not reproduce.

        Checks that the accountant, run on the recorded parameters and sigma, certifies an eps no
        larger than the recorded eps at the recorded delta, and, for a record issued by this
        accountant version, that every number of the recorded derivation agrees with the
        recomputed one (relative 1e-9). A record from another version is checked for its
        guarantee only: its derivation is that version's (e.g. DP-SGD at integer Renyi orders
        before 0.2.0), and a claim the current accountant proves is still a true claim.
        Returns ``self``.
        """
        p = dict(_thaw(self.parameters))
        try:
            if self.method == "dpsgd_group":
                if float(p["noise_multiplier"]) != self.sigma:
                    raise ValueError(f"sigma={self.sigma!r} differs from the recorded "
                                     f"noise_multiplier={p['noise_multiplier']!r}")
                fresh = issue_dpsgd_certificate(
                    p["noise_multiplier"], p["sampling_rate"], p["steps"], self.delta,
                    group_size=p.get("group_size", 1))
            else:
                fresh = issue_certificate(
                    self.sigma, self.delta, p.get("T"), p.get("C0"), p.get("C1"), p.get("gamma"),
                    p.get("lam", 0.0), method=self.method, C2=p.get("C2"),
                    sigma0=p.get("sigma0", 0.0),
                    noise_after_projection=p.get("noise_after_projection", True),
                    conversion=p.get("conversion", "improved"),
                    shift_slack=p.get("shift_slack", 0.0))
        except KeyError as exc:
            raise ValueError(f"certificate parameters lack {exc.args[0]!r}") from None
        except ValueError as exc:
            raise ValueError(f"certificate does not reproduce: {exc}") from None
        if not fresh.eps <= self.eps:
            raise ValueError(f"the accountant certifies eps={fresh.eps!r} at delta={self.delta!r}, "
                             f"more than the recorded eps={self.eps!r}")
        if self.version == fresh.version:
            _compare("derivation", _thaw(self.derivation), _thaw(fresh.derivation))
        return self


def _compare(path, recorded, fresh):
    if isinstance(fresh, dict):
        if not isinstance(recorded, dict):
            raise ValueError(f"{path} does not reproduce: expected a mapping")
        for key, value in fresh.items():
            if key not in recorded:
                raise ValueError(f"{path}.{key} is missing from the certificate")
            _compare(f"{path}.{key}", recorded[key], value)
        return
    if isinstance(fresh, list):
        if not isinstance(recorded, list) or len(recorded) != len(fresh):
            raise ValueError(f"{path} does not reproduce (length differs)")
        for i, (a, b) in enumerate(zip(recorded, fresh)):
            _compare(f"{path}[{i}]", a, b)
        return
    if isinstance(fresh, float) and isinstance(recorded, numbers.Real) \
            and not isinstance(recorded, bool):
        a, b = float(recorded), fresh
        if a == b or (math.isfinite(a) and math.isfinite(b)
                      and abs(a - b) <= _REL_TOL * max(abs(a), abs(b))):
            return
        raise ValueError(f"{path} does not reproduce: recorded {a!r}, recomputed {b!r}")
    if recorded != fresh:
        raise ValueError(f"{path} does not reproduce: recorded {recorded!r}, recomputed {fresh!r}")


# ----------------------------------------------------------------------------------------------
# Factories
# ----------------------------------------------------------------------------------------------

@entry_point
def issue_certificate(sigma, delta, T, C0, C1, gamma, lam=0.0, *, method="gradient_clipping",
                      C2=None, sigma0=0.0, eps=None, noise_after_projection=True,
                      conversion="improved", shift_slack=0.0) -> Certificate:
    """Compute the guarantee of a setting and record it with its derivation.

    With ``eps=None`` the certificate states the accountant's eps (rounded up). With a target eps
    it checks that the accountant reproduces it (certified eps <= target) and states the target;
    otherwise it raises ``ValueError`` saying what the accountant certifies instead. A nonzero
    ``shift_slack`` (see :func:`certunlearn_theory.noise_for`) is recorded in the parameters.

    >>> c = issue_certificate(1.618053, 1e-5, 100, 1.0, 1.0, 0.01, eps=1.0)
    >>> c.eps, c.derivation["horizon"]
    (1.0, 100)
    >>> Certificate.from_json(c.to_json()) == c
    True
    """
    if method not in METHODS:
        raise InvalidParameterError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    sigma0 = 0.0 if sigma0 is None else sigma0
    delta_m = check_delta(delta)
    params: dict = {"delta": delta}
    if method == "gradient_clipping":
        bound = pabi_bound(sigma, T, C0, C1, gamma, lam, sigma0=sigma0, as_mpf=True,
                           shift_slack=shift_slack)
        certified, alpha = renyi_to_dp(RenyiCurve.linear(bound.rho), delta_m,
                                       conversion=conversion, with_order=True)
        params.update(T=T, C0=C0, C1=C1, gamma=gamma, lam=lam, sigma0=sigma0,
                      conversion=conversion)
        derivation = {"rho_pabi": to_float(bound.rho, "up"), "horizon": bound.horizon,
                      "Z": to_float(bound.Z, "up"), "S": to_float(bound.S, "down"),
                      "alpha": alpha, "conversion": conversion,
                      "bound": "D_alpha <= alpha * rho_pabi, rho_pabi = Z^2/(2 S) at the horizon"}
        sigma_value = sigma if is_sequence(sigma) else float(sigma)
    elif method == "model_clipping":
        certified = model_clipping_epsilon(sigma, delta, T, C0, C2, sigma0=sigma0, C1=C1,
                                           gamma=gamma, lam=lam,
                                           noise_after_projection=noise_after_projection,
                                           shift_slack=shift_slack)
        b = model_clipping_bound(sigma, certified, T, C0, C2, sigma0=sigma0, C1=C1, gamma=gamma,
                                 lam=lam, noise_after_projection=noise_after_projection,
                                 shift_slack=shift_slack)
        params.update(T=T, C0=C0, C2=C2, sigma0=sigma0,
                      noise_after_projection=bool(noise_after_projection))
        if not noise_after_projection:
            params.update(C1=C1, gamma=gamma, lam=lam)
        derivation = {"log_deltas": list(b.log_deltas), "eps_recursion": b.eps,
                      "bound": "delta_{t+1} = delta_t * theta_{eps~_t}(r), "
                               "eps~_t = ln(1 + (e^eps - 1)/delta_t)"}
        sigma_value = float(sigma)
    else:
        certified = epsilon_for(sigma, delta, None, C0, None, None, method=method,
                                shift_slack=shift_slack)
        params.update(C0=C0)
        sensitivity = 2.0 * float(C0) + float(shift_slack)
        derivation = {"sensitivity": sensitivity, "ratio": sensitivity / float(sigma),
                      "bound": "theta_eps(2 C0 / sigma) <= delta (analytic Gaussian)"}
        sigma_value = float(sigma)
    if shift_slack:
        params.update(shift_slack=shift_slack)
    if is_sequence(sigma_value):
        raise InvalidParameterError("a certificate records one constant sigma; got a sequence "
                                    "(record the schedule in the training log instead)")
    if eps is None:
        stated = certified
    else:
        stated = float(check_epsilon(eps))
        if certified > stated:
            raise ValueError(f"the accountant certifies only eps={certified!r} > the claimed "
                             f"eps={stated!r} at delta={delta!r} for method {method}")
    return Certificate(method=method, parameters=params, sigma=sigma_value, eps=stated,
                       delta=float(delta), derivation=derivation, version=_version())


@entry_point
def issue_dpsgd_certificate(noise_multiplier, sampling_rate, steps, delta, *, group_size=1,
                            eps=None) -> Certificate:
    """Certificate of the DP-SGD group-privacy baseline (method ``"dpsgd_group"``).

    The guarantee is :func:`certunlearn_theory.dpsgd_epsilon`; the derivation records the
    per-example (eps1, delta1), the orders evaluated exactly and the order used.

    >>> c = issue_dpsgd_certificate(1.0, 0.01, 1000, 1e-5)
    >>> c.verify() is c
    True
    """
    b = dpsgd_bound(noise_multiplier, sampling_rate, steps, delta, group_size=group_size)
    if eps is None:
        stated = b.eps
    else:
        stated = float(check_epsilon(eps))
        if b.eps > stated:
            raise ValueError(f"the accountant certifies only eps={b.eps!r} > the claimed "
                             f"eps={stated!r} for DP-SGD")
    params = {"noise_multiplier": noise_multiplier, "sampling_rate": sampling_rate,
              "steps": steps, "group_size": group_size, "delta": delta}
    derivation = {"eps1": b.eps1, "delta1": b.delta1, "order": b.order,
                  "orders": {str(k): v for k, v in b.orders.items()},
                  "bound": "Poisson-subsampled Gaussian RDP (real orders), improved "
                           "conversion, group lift (k eps1, delta1 (e^(k eps1)-1)/(e^eps1-1))"}
    return Certificate(method="dpsgd_group", parameters=params, sigma=float(noise_multiplier),
                       eps=stated, delta=float(delta), derivation=derivation, version=_version())

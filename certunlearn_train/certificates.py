"""Run certificates: the accountant's certificate plus everything needed to audit one run.

A :class:`RunCertificate` (format ``certunlearn.run/2``) records the method, every parameter, the
noise sigma, the (eps, delta) guarantee, the accountant's certificate (with its derivation), the
retain and forget set sizes, the SHA-256 of the model weights before and after, the frozen public
parameters (names and hash) if any, the library versions, and optionally an Ed25519 signature. It
never records the noise seed (whoever knows it can remove the noise); it only records whether the
caller chose one, which makes the run a reproduction rather than a private release.

Vocabulary: the accountant's names (``certunlearn_theory.Certificate``): ``eps``, ``delta``,
``sigma``; parameters ``T``, ``C0``, ``C1``, ``C2``, ``gamma`` (the step size), ``lam``,
``sigma0``; DP-SGD: ``noise_multiplier``, ``sampling_rate``, ``steps``, ``group_size``. Methods:
``gradient_clipping``, ``model_clipping``, ``output_perturbation``, ``dpsgd_group``, ``retrain``.
Files of the previous format ``certunlearn.run/1`` (``epsilon``, ``steps``, ``lr``, ``dpsgd``) are
converted when read.

:meth:`RunCertificate.verify` checks every field it can: types and ranges of all of them; that
every parameter which enters the accountant equals the accountant record's; the accountant
record's own derivation; a fresh accountant certificate issued from the recorded parameters; the
weights' hash (and the public parameters' hash) given the model; the signature if present. It
returns a :class:`VerifyReport` that lists what a certificate alone cannot establish, and raises
:class:`CertificateError` (a ``ValueError``) with the reason when a check fails.

Numbers are compared by one rule, :func:`same_value`: a recorded value must equal the value it is
checked against exactly (JSON floats are written by ``repr`` and read back bit for bit). The
only tolerance is inside the accountant, whose ``Certificate.verify`` compares the derivation
numbers it recomputes with transcendental functions to a relative 1e-9.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import re
import tempfile
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Dict, List, Mapping, Optional, Tuple, TypeGuard

__all__ = ["RunCertificate", "CertificateError", "VerifyReport", "build_run_certificate",
           "weights_sha256", "public_parameters_record", "atomic_write_bytes", "same_value",
           "canonical_bytes", "verify_chain", "FORMAT", "FORMAT_V1", "RUN_METHODS",
           "ACCOUNTED_METHODS", "METHOD_ALIASES", "float32_shift_slack", "split_tail_delta",
           "run_delta", "FLOAT32_U", "TAIL_DELTA_SHARE", "PROJECTION_SLACK"]

FORMAT = "certunlearn.run/2"
FORMAT_V1 = "certunlearn.run/1"
#: Methods whose guarantee the accountant computes from (sigma, parameters).
ACCOUNTED_METHODS = ("gradient_clipping", "model_clipping", "output_perturbation", "dpsgd_group")
RUN_METHODS = ACCOUNTED_METHODS + ("retrain",)
#: Other names accepted for a method when a certificate is built or read (mapped on input).
METHOD_ALIASES = {"dpsgd": "dpsgd_group"}

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class CertificateError(ValueError):
    """A certificate is malformed, does not match the model, or its guarantee cannot be reproduced."""


# ----------------------------------------------------------------------------------------------
# Small pieces
# ----------------------------------------------------------------------------------------------

def same_value(a: Any, b: Any) -> bool:
    """The one comparison rule of run certificates: equal JSON values, numbers compared exactly.

    Booleans are not numbers here (``True`` differs from ``1``), NaN equals nothing, an integer
    equals a float only when both denote the same number. Mappings and lists compare element-wise.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _format_bound(x: float, digits: int, rounding) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
        raise ValueError(f"x must be a number, got {x!r}")
    if isinstance(digits, bool) or not isinstance(digits, int) or digits < 1:
        raise ValueError(f"digits must be an integer >= 1, got {digits!r}")
    if math.isinf(x) or x == 0:
        return repr(float(x)) if math.isinf(x) else "0"
    short = Decimal(repr(float(x)))  # the shortest string that reads back as x
    if len(short.as_tuple().digits) <= digits:
        return _plain_decimal(short.normalize(), digits)
    d = Decimal(float(x))  # exact value of the double
    r = d.quantize(Decimal(1).scaleb(d.adjusted() - digits + 1), rounding=rounding)
    if r.adjusted() > d.adjusted():  # 9.99..96 -> 10.0000: one digit too many
        r = d.quantize(Decimal(1).scaleb(d.adjusted() - digits + 2), rounding=rounding)
    return _plain_decimal(r.normalize(), digits)


def _plain_decimal(r: Decimal, digits: int) -> str:
    if -4 <= r.adjusted() < digits:  # like %g: fixed point for moderate exponents
        return format(r, "f")
    return format(r, "e")


def _format_up(x: float, digits: int = 6) -> str:
    """Decimal string of ``x`` with at most ``digits`` significant digits, never below ``x``.

    When the shortest string that reads back as ``x`` (``repr``) has at most ``digits`` digits,
    that string is returned (``1e-05``: it denotes the double ``x`` itself); otherwise the exact
    value of the double is rounded up (towards +inf) to ``digits`` significant digits.

    Every eps and delta the command line prints goes through here, so a printed guarantee is
    never stronger than the computed one (1.2345649 prints as 1.23457, not 1.23456).
    """
    return _format_bound(x, digits, ROUND_CEILING)


def _format_down(x: float, digits: int = 6) -> str:
    """Like :func:`_format_up`, rounding down: the string is never above ``x``."""
    return _format_bound(x, digits, ROUND_FLOOR)


def weights_sha256(model_or_state) -> str:
    """SHA-256 over a model's ``state_dict`` (names, dtypes, shapes and raw little-endian bytes).

    Accepts an ``nn.Module`` or a state dict; both give the same digest for the same weights.
    """
    import torch
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") \
        else model_or_state
    if not isinstance(state, Mapping):
        raise CertificateError(f"expected a model or a state dict, got {type(state).__name__}")
    h = hashlib.sha256()
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise CertificateError(f"state dict entry {name!r} is not a tensor")
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def public_parameters_record(model_or_state, names) -> Dict[str, Any]:
    """``{"names": [...], "sha256": ...}`` of frozen public parameters (THEORY.md section 10.2).

    The hash is :func:`weights_sha256` of the state-dict entries ``names`` in the order given, so
    anyone holding the model can recompute it.
    """
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") \
        else model_or_state
    names = list(names)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise CertificateError(f"public parameter names must be distinct strings, got {names!r}")
    missing = [n for n in names if n not in state]
    if missing:
        raise CertificateError(f"public parameter(s) {', '.join(missing)} are not in the model")
    return {"names": names, "sha256": weights_sha256({n: state[n] for n in names})}


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def canonical_bytes(data: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: sorted-key compact JSON of the certificate without
    ``signature`` (ASCII, floats by ``repr``, no NaN)."""
    body = {k: v for k, v in data.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _versions() -> Dict[str, str]:
    import certunlearn_theory
    import certunlearn_train
    out = {"certunlearn": certunlearn_train.__version__,
           "certunlearn_theory": certunlearn_theory.__version__}
    try:
        import torch
        out["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


# ----------------------------------------------------------------------------------------------
# Parameter schema
# ----------------------------------------------------------------------------------------------

def _is_num(v) -> TypeGuard[float]:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _pos_int(v):
    return None if not isinstance(v, bool) and isinstance(v, int) and v >= 1 \
        else "an integer >= 1"


def _nonneg(v):
    return None if _is_num(v) and v >= 0 else "a finite number >= 0"


def _pos(v):
    return None if _is_num(v) and v > 0 else "a finite number > 0"


def _opt_pos(v):
    return None if v is None else _pos(v)


def _clip_mode(v):
    return None if v in ("batch", "per_sample") else "'batch' or 'per_sample'"


#: Unit roundoff of float32 round-to-nearest (THEORY.md section 8.1).
FLOAT32_U = 2.0 ** -24
#: Share of the target delta spent on the event that an iterate norm exceeds its a-priori bound.
TAIL_DELTA_SHARE = 2.0 ** -10
#: Relative shift slack of the projection-only methods (model clipping: times C2; output
#: perturbation: times C0): a diameter 2C(1 + 2^-20) covers up to 16 float32 roundings.
PROJECTION_SLACK = 2.0 ** -19
_SAFETY = 1.0 + 2.0 ** -10  # on the float evaluation of the slack formula


def _up(x: float) -> float:
    return math.nextafter(x, math.inf)


def split_tail_delta(delta: float) -> Tuple[float, float]:
    """``(delta_accountant, delta_tail)`` for a gradient-clipping target ``delta``.

    ``delta_tail = delta * 2^-10`` bounds the probability that an iterate leaves the a-priori
    ball of :func:`float32_shift_slack`; ``delta_accountant`` is ``delta - delta_tail`` rounded
    down, so that ``run_delta(delta_accountant, delta_tail) <= delta``.
    """
    from fractions import Fraction
    tail = float(delta) * TAIL_DELTA_SHARE
    acct = float(delta) - tail
    while Fraction(acct) + Fraction(tail) > Fraction(delta):
        acct = math.nextafter(acct, 0.0)
    return acct, tail


def run_delta(delta_accountant: float, delta_tail: float) -> float:
    """``delta_accountant + delta_tail`` rounded up to a float (the run's delta)."""
    from fractions import Fraction
    s = delta_accountant + delta_tail
    if Fraction(s) < Fraction(delta_accountant) + Fraction(delta_tail):
        s = _up(s)
    return s


def float32_shift_slack(*, sigma: float, T: int, d: int, C0: float, C1: float, gamma: float,
                        lam: float, eps: float, delta_tail: float, batch_size: int) -> float:
    """Per-step shift slack covering float32 rounding in gradient clipping (THEORY.md 8.1).

    With probability at least ``1 - delta_tail / (1 + e^eps)`` every iterate of both coupled
    runs has norm at most ``B = C0 c^T + gamma C1 sum_{k<T} c^k + sigma sqrt(sum_{k<T} c^(2k))
    (sqrt(d) + sqrt(2x))`` with ``c = max(1, |1 - gamma lam|)`` and
    ``x = ln(2 T (1 + e^eps) / delta_tail)`` (Laurent-Massart, union bound over T steps and two
    runs). On that event one step's rounding moves the coupled shift by at most
    ``6 u B + 2 (batch_size + 2) u gamma C1``, u = 2^-24; the result carries a relative
    safety factor 1 + 2^-10 on its float evaluation and is rounded up.
    """
    c = max(1.0, abs(1.0 - gamma * lam))
    if c == 1.0:
        geo, geo2, cT = float(T), float(T), 1.0
    else:  # gamma lam > 2: the iterates may grow geometrically
        try:
            cT = c ** T
        except OverflowError:
            cT = math.inf
        geo = (cT - 1.0) / (c - 1.0)
        geo2 = (cT * cT - 1.0) / (c * c - 1.0)
    log_ratio = math.log(2.0 * T) + eps + math.log1p(math.exp(-eps)) - math.log(delta_tail)
    x = log_ratio * _SAFETY
    norm = (C0 * cT + gamma * C1 * geo
            + sigma * math.sqrt(geo2) * (math.sqrt(d) + math.sqrt(2.0 * x))) * _SAFETY
    slack = (6.0 * FLOAT32_U * norm + 2.0 * (batch_size + 2) * FLOAT32_U * gamma * C1) * _SAFETY
    if not math.isfinite(slack):
        raise ValueError(f"the float32 shift slack is not finite for sigma={sigma!r}, T={T!r}, "
                         f"d={d!r}, C0={C0!r}, C1={C1!r}, gamma={gamma!r}, lam={lam!r}")
    return _up(slack)


_FINETUNE = {"batch_size": _pos_int, "finetune_epochs": _nonneg, "finetune_lr": _opt_pos,
             "finetune_batch_size": _pos_int}
#: Parameters recorded for each method that do not enter the accountant (checked for type and
#: range only); every other parameter must be one the accountant records.
_RUN_ONLY = {
    "gradient_clipping": dict(_FINETUNE, clip=_clip_mode, float32_tail_delta=_pos, d=_pos_int),
    "model_clipping": dict(_FINETUNE, clip=_clip_mode, C1=_opt_pos, gamma=_pos, lam=_nonneg),
    "output_perturbation": dict(_FINETUNE),
    "dpsgd_group": {"clip": _pos, "gamma": _pos, "expected_batch_size": _pos_int,
                    "train_size": _pos_int},
    "retrain": {"epochs": _nonneg, "gamma": _pos, "batch_size": _pos_int},
}
for _schema in _RUN_ONLY.values():  # processes of a data-parallel run (1: one process)
    _schema["world_size"] = _pos_int
#: Run-only parameters a certificate may leave out (recorded only when they differ from a default,
#: or absent from certificates written before they existed).
_OPTIONAL_RUN = frozenset({"finetune_batch_size", "world_size", "float32_tail_delta", "d"})
#: Names of format certunlearn.run/1 (and of the callers) -> this format's (the accountant's).
_PARAM_RENAMES = {"lr": "gamma", "steps": "T"}


def _rename_params(method: str, params: Mapping[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in params.items():
        new = key if (method == "dpsgd_group" and key == "steps") \
            else _PARAM_RENAMES.get(key, key)  # the accountant's DP-SGD record says steps
        if new in out and not same_value(out[new], value):
            raise CertificateError(f"parameters give {key!r} and {new!r} with different values")
        out[new] = value
    return out


def _issue(method: str, sigma, eps, delta, p: Mapping[str, Any]):
    """The accountant's certificate for ``p`` (this format's names), claiming ``eps``."""
    import certunlearn_theory as ct
    if method == "dpsgd_group":
        return ct.issue_dpsgd_certificate(p["noise_multiplier"], p["sampling_rate"], p["steps"],
                                          delta, group_size=p["group_size"], eps=eps)
    slack = p.get("shift_slack", 0.0)
    if method == "output_perturbation":
        return ct.issue_certificate(sigma, delta, None, p["C0"], None, None, method=method,
                                    eps=eps, shift_slack=slack)
    if method == "gradient_clipping":
        return ct.issue_certificate(sigma, delta, p["T"], p["C0"], p["C1"], p["gamma"],
                                    p["lam"], method=method, sigma0=p["sigma0"], eps=eps,
                                    conversion=p.get("conversion", "improved"),
                                    shift_slack=slack)
    return ct.issue_certificate(sigma, delta, p["T"], p["C0"], p.get("C1"), p.get("gamma"),
                                p.get("lam", 0.0), method=method, C2=p["C2"],
                                sigma0=p["sigma0"], eps=eps,
                                noise_after_projection=p.get("noise_after_projection", True),
                                shift_slack=slack)


def _acct_keys(acct_params: Mapping[str, Any]) -> List[str]:
    return [k for k in acct_params if k != "delta"]


def _normalise_params(method: str, params: Mapping[str, Any],
                      acct_params: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The run's parameters in this format: accountant inputs as the accountant records them,
    then the method's run-only parameters; a given key outside both is dropped when it is unset
    (None or 0, what the v1 baselines wrote for unused slots) and refused otherwise."""
    params = _rename_params(method, params)
    run_only = _RUN_ONLY[method]
    out: Dict[str, Any] = {}
    if acct_params is not None:
        for key in _acct_keys(acct_params):
            out[key] = acct_params[key]
    for key, value in params.items():
        if key in out:
            continue
        if key in run_only:
            out[key] = value
        elif value is None or (not isinstance(value, bool) and value == 0):
            continue
        else:
            raise CertificateError(f"parameter {key!r} = {value!r} does not apply to method "
                                   f"{method}")
    return _no_unused_finetune_lr(out)


def _no_unused_finetune_lr(params: Dict[str, Any]) -> Dict[str, Any]:
    """A fine-tuning step size is recorded only when fine-tuning ran (finetune_epochs > 0)."""
    if params.get("finetune_epochs") == 0 and params.get("finetune_lr") is not None:
        params = dict(params, finetune_lr=None)
    return params


# ----------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------

def build_run_certificate(*, method: str, sigma: Optional[float], eps: float, delta: float,
                          parameters: Mapping[str, Any], retain_size: int,
                          forget_size: Optional[int], sha_before: str, sha_after: str,
                          seed_user_supplied: bool,
                          public_parameters: Optional[Mapping[str, Any]] = None,
                          ) -> "RunCertificate":
    """Issue the accountant's certificate for the run and wrap it with the run's metadata.

    ``method`` may be an alias from :data:`METHOD_ALIASES` (``"dpsgd"``); parameter names may be
    the previous ones (``steps`` for ``T``, ``lr`` for ``gamma``): both are mapped to this
    format's names.
    """
    method = METHOD_ALIASES.get(method, method)
    if method not in RUN_METHODS:
        raise CertificateError(f"method must be one of {', '.join(RUN_METHODS)}, got {method!r}")
    if method == "retrain":
        acct, eps_c, delta_c, sigma = None, 0.0, 0.0, None
        params = _normalise_params(method, parameters, None)
    else:
        renamed = _rename_params(method, parameters)
        tail = renamed.get("float32_tail_delta") if method == "gradient_clipping" else None
        acct_delta = delta if tail is None else split_tail_delta(delta)[0]
        if tail is not None and not same_value(tail, split_tail_delta(delta)[1]):
            raise CertificateError(f"parameters.float32_tail_delta = {tail!r} is not delta * "
                                   f"2^-10 = {split_tail_delta(delta)[1]!r}")
        acct_obj = _issue(method, sigma, eps, acct_delta, renamed)
        acct = acct_obj.to_dict()
        eps_c, delta_c, sigma = float(acct_obj.eps), float(acct_obj.delta), float(acct_obj.sigma)
        if tail is not None:
            delta_c = run_delta(delta_c, tail)
        params = _normalise_params(method, renamed, acct["parameters"])
    cert = RunCertificate(
        method=method, eps=eps_c, delta=delta_c, sigma=sigma, parameters=params,
        retain_size=int(retain_size),
        forget_size=None if forget_size is None else int(forget_size),
        model_sha256_before=sha_before, model_sha256_after=sha_after,
        public_parameters=None if public_parameters is None else dict(public_parameters),
        accountant=acct, library_version=_versions(),
        noise_seed_user_supplied=bool(seed_user_supplied),
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    cert.verify()  # the issuer never writes what the verifier would refuse
    return cert


# ----------------------------------------------------------------------------------------------
# Verification report
# ----------------------------------------------------------------------------------------------

#: What a certificate alone cannot establish, by field (the CLI prints these).
NOT_CHECKABLE = {
    "retain_size": "the size of the retain set (the data are not in the certificate)",
    "forget_size": "the size of the forget set (the data are not in the certificate)",
    "model_sha256_before": "which model the run started from (checked only along a --chain)",
    "created_utc": "the creation time",
    "noise_seed_user_supplied": "that the noise seed was secret (a caller-chosen seed voids "
                                "the guarantee; only a signature protects this flag)",
    "library_version": "which library versions produced the run",
    "accountant.version": "which accountant version issued the record",
}


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """The outcome of :meth:`RunCertificate.verify` (failures raise instead).

    Attributes:
        guarantee_recomputed: the accountant reproduced (eps, delta) from the parameters (False
            for ``retrain``: exact retraining cannot be checked from a certificate).
        model_checked: a model was given and its SHA-256 (and public parameters) matched.
        signature: ``"unsigned"``, or ``"valid"`` with the signing key's fingerprint.
        not_checked: ``(field, reason)`` for every claim taken on trust.
    """
    method: str
    eps: float
    delta: float
    guarantee_recomputed: bool
    model_checked: bool
    signature: str
    not_checked: Tuple[Tuple[str, str], ...]

    def not_checked_fields(self) -> List[str]:
        return [f for f, _ in self.not_checked]


# ----------------------------------------------------------------------------------------------
# The certificate
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunCertificate:
    """The record of one unlearning (or baseline) run; see the module docstring.

    ``eps`` and ``delta`` are the accountant's (rounded up); ``retrain`` claims exact (0, 0),
    which no certificate can demonstrate.
    """

    method: str
    eps: float
    delta: float
    sigma: Optional[float]
    parameters: Dict[str, Any]
    retain_size: int
    forget_size: Optional[int]
    model_sha256_before: str
    model_sha256_after: str
    accountant: Optional[Dict[str, Any]]
    library_version: Dict[str, str]
    noise_seed_user_supplied: bool
    created_utc: str
    public_parameters: Optional[Dict[str, Any]] = None
    format: str = FORMAT
    signature: Optional[Dict[str, str]] = None

    @property
    def epsilon(self) -> float:
        """``eps`` under its name in format ``certunlearn.run/1``."""
        return self.eps

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), allow_nan=False))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunCertificate":
        """Read a dict of this format, or of ``certunlearn.run/1`` (converted)."""
        if not isinstance(data, Mapping):
            raise CertificateError(f"a certificate must be a JSON object, got {type(data).__name__}")
        fmt = data.get("format")
        if fmt == FORMAT_V1:
            data = _from_v1(data)
        elif fmt != FORMAT:
            raise CertificateError(f"unsupported certificate format {fmt!r} (this library reads "
                                   f"{FORMAT!r} and {FORMAT_V1!r})")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names), key=str)
        if unknown:
            raise CertificateError(f"unknown certificate field(s): {', '.join(map(str, unknown))}")
        missing = [n for n in names if n not in data]
        if missing:
            raise CertificateError(f"certificate is missing field(s): {', '.join(missing)}")
        return cls(**{n: data[n] for n in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "RunCertificate":
        def no_duplicates(pairs):
            keys = [k for k, _ in pairs]
            dup = sorted({k for k in keys if keys.count(k) > 1})
            if dup:
                raise CertificateError(f"certificate repeats the key(s) {', '.join(dup)}")
            return dict(pairs)

        def no_constant(name):
            raise CertificateError(f"certificate holds {name}, which JSON does not allow")
        try:
            data = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise CertificateError(f"certificate is not valid JSON ({exc})") from None
        except CertificateError:
            raise
        except ValueError:  # an integer of more digits than int() converts (4300 by default)
            raise CertificateError("certificate holds an integer too long to read") from None
        return cls.from_dict(data)

    def save(self, path: str) -> None:
        """Write the JSON atomically (temporary file + rename)."""
        atomic_write_bytes(path, (self.to_json() + "\n").encode())

    @classmethod
    def load(cls, path: str) -> "RunCertificate":
        if os.path.isdir(path):
            raise CertificateError(f"certificate {path!r} is a directory")
        try:
            with open(path, "rb") as fh:
                raw = fh.read(64 << 20)
        except OSError as exc:
            raise CertificateError(f"cannot read certificate {path!r}: {exc.strerror}") from None
        if raw[:2] == b"PK" or raw[:1] == b"\x80":
            raise CertificateError(f"{path}: this is a model file, not a certificate (usage: "
                                   "certunlearn verify CERT MODEL)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CertificateError(f"{path}: not a certificate (not UTF-8 text)") from None
        return cls.from_json(text)

    # -- signatures -------------------------------------------------------------------------
    def sign(self, private_key) -> "RunCertificate":
        """A copy carrying an Ed25519 signature over :func:`canonical_bytes` (see ``signing``).

        ``private_key`` is a key object or the path of a key file from ``certunlearn keygen``.
        """
        from .signing import sign_record
        return dataclasses.replace(self, signature=sign_record(self.to_dict(), private_key))

    # -- verification -----------------------------------------------------------------------
    def verify(self, model=None, *, public_key=None) -> VerifyReport:
        """Check every field that can be checked; return what was taken on trust.

        Steps: the format and the type and range of every field; for accounted methods the
        accountant record's own check (``Certificate.verify``: the derivation recomputed), a
        fresh accountant certificate issued from the run's parameters claiming the recorded eps,
        equal to the record (method, parameters, sigma, eps, delta), and every accountant input
        among the run's parameters equal to the record's; the DP-SGD consistency of sizes and
        sampling rate; ``retrain`` claims exactly (0, 0) with no accountant record; with
        ``model``, the SHA-256 of its weights and of the public parameters; the signature if
        present (against ``public_key`` if given, which then requires one).

        Raises:
            CertificateError: with the first reason found.
        """
        not_checked: Dict[str, str] = {}
        self._check_types()
        for name, why in NOT_CHECKABLE.items():
            if name != "accountant.version" or self.accountant is not None:
                not_checked[name] = why
        if self.method == "retrain":
            self._check_params_schema()
            recomputed = False
            not_checked["method"] = ("a retrain claims exact unlearning; exact retraining "
                                     "cannot be checked from a certificate")
        else:
            self._verify_accounted()
            recomputed = True
        if not self.float32_accounted():
            not_checked["float32_rounding"] = (
                "float32 rounding not accounted (issued before the shift slack of THEORY.md "
                "section 8.1 was recorded): the guarantee assumes exact arithmetic")
        acct_keys = set() if self.accountant is None else \
            set(_acct_keys(self.accountant["parameters"]))
        for key in self.parameters:
            if key not in acct_keys and key not in _DERIVED.get(self.method, ()):
                not_checked[f"parameters.{key}"] = "describes the run; does not enter the " \
                                                   "guarantee"
        if self.method == "gradient_clipping" and "shift_slack" in self.parameters \
                and "parameters.batch_size" in not_checked:
            not_checked["parameters.batch_size"] = (
                "describes the run; enters only the float32 shift slack, recomputed from it "
                "(the batch size actually used is not checked)")
        if self.method == "gradient_clipping" and "d" in self.parameters:
            not_checked["parameters.d"] = ("the number of private parameters, from which the "
                                           "float32 shift slack is recomputed (the model's "
                                           "parameter count is not checked)")
        model_checked = False
        if model is not None:
            state = model.state_dict() if hasattr(model, "state_dict") else model
            got = weights_sha256(state)
            if got != self.model_sha256_after:
                raise CertificateError(
                    f"model weights do not match the certificate: SHA-256 {got[:16]}... but the "
                    f"certificate records {self.model_sha256_after[:16]}...")
            if self.public_parameters is not None:
                names = self.public_parameters["names"]
                rec = public_parameters_record(state, names)
                if rec["sha256"] != self.public_parameters["sha256"]:
                    raise CertificateError("the model's public parameters do not match the "
                                           "certificate's public_parameters.sha256")
            model_checked = True
        else:
            not_checked["model_sha256_after"] = "no model given"
            if self.public_parameters is not None:
                not_checked["public_parameters"] = "no model given"
        if self.public_parameters is not None:
            not_checked["public_parameters.names"] = (
                "that these parameters are public (fixed independently of the private data) "
                "is the user's declaration")
        signature = self._check_signature(public_key)
        if signature == "unsigned":
            not_checked["signature"] = "unsigned: anyone could have edited the unchecked fields"
        return VerifyReport(method=self.method, eps=self.eps, delta=self.delta,
                            guarantee_recomputed=recomputed, model_checked=model_checked,
                            signature=signature, not_checked=tuple(not_checked.items()))

    def _check_types(self) -> None:
        if self.format != FORMAT:
            raise CertificateError(f"unsupported certificate format {self.format!r} "
                                   f"(this library reads {FORMAT!r})")
        if self.method not in RUN_METHODS:
            raise CertificateError(f"method must be one of {', '.join(RUN_METHODS)}, got "
                                   f"{self.method!r}")
        for name in ("eps", "delta"):
            v = getattr(self, name)
            if not _is_num(v) or v < 0:
                raise CertificateError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.delta >= 1:
            raise CertificateError(f"delta must be < 1, got {self.delta!r}")
        if self.method == "retrain":
            if self.sigma is not None:
                raise CertificateError(f"a retrain certificate has no sigma, got {self.sigma!r}")
        elif not _is_num(self.sigma) or self.sigma <= 0:
            raise CertificateError(f"sigma must be a finite number > 0, got {self.sigma!r}")
        if not isinstance(self.parameters, Mapping) \
                or not all(isinstance(k, str) for k in self.parameters):
            raise CertificateError("parameters must be an object")
        if _pos_int(self.retain_size):
            raise CertificateError(f"retain_size must be an integer >= 1, got "
                                   f"{self.retain_size!r}")
        if self.forget_size is not None and _pos_int(self.forget_size):
            raise CertificateError(f"forget_size must be an integer >= 1 or null, got "
                                   f"{self.forget_size!r}")
        for name in ("model_sha256_before", "model_sha256_after"):
            v = getattr(self, name)
            if not isinstance(v, str) or not _SHA_RE.match(v):
                raise CertificateError(f"{name} must be 64 lowercase hex digits, got {v!r}")
        if self.public_parameters is not None:
            pp = self.public_parameters
            names = pp.get("names") if isinstance(pp, Mapping) else None
            if not isinstance(pp, Mapping) or not {"names", "sha256"} <= set(pp) \
                    or not set(pp) <= {"names", "sha256", "assumption"} \
                    or not isinstance(pp.get("assumption", ""), str) \
                    or not isinstance(names, list) or not names \
                    or not all(isinstance(n, str) and n for n in names) \
                    or len(set(names)) != len(names) \
                    or not isinstance(pp["sha256"], str) or not _SHA_RE.match(pp["sha256"]):
                raise CertificateError("public_parameters must be null or {\"names\": [distinct "
                                       "parameter names], \"sha256\": 64 hex digits, "
                                       "optionally \"assumption\": text}")
        if not isinstance(self.library_version, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str)
                for k, v in self.library_version.items()):
            raise CertificateError("library_version must map names to version strings")
        if not isinstance(self.noise_seed_user_supplied, bool):
            raise CertificateError(f"noise_seed_user_supplied must be true or false, got "
                                   f"{self.noise_seed_user_supplied!r}")
        try:
            when = _dt.datetime.fromisoformat(self.created_utc) \
                if isinstance(self.created_utc, str) else None
        except ValueError:
            when = None
        if when is None or when.utcoffset() != _dt.timedelta(0):
            raise CertificateError(f"created_utc must be an ISO 8601 time in UTC, got "
                                   f"{self.created_utc!r}")
        if self.method == "retrain" and self.accountant is not None:
            raise CertificateError("a retrain certificate has no accountant record")
        if self.method == "retrain" and (self.eps != 0 or self.delta != 0):
            raise CertificateError("a retrain certificate claims exact unlearning: eps and "
                                   "delta must be 0")

    def _check_params_schema(self) -> None:
        acct_keys = set() if self.accountant is None else \
            set(_acct_keys(self.accountant.get("parameters") or {}))
        run_only = _RUN_ONLY[self.method]
        for key, value in self.parameters.items():
            if key in acct_keys:
                continue
            if key not in run_only:
                raise CertificateError(f"parameters.{key} does not belong to method "
                                       f"{self.method}")
            problem = run_only[key](value)
            if problem:
                raise CertificateError(f"parameters.{key} must be {problem}, got {value!r}")
        missing = sorted((acct_keys | set(run_only)) - _OPTIONAL_RUN - set(self.parameters))
        if missing:
            raise CertificateError(f"parameters lack {', '.join(missing)} (method "
                                   f"{self.method})")
        p = self.parameters
        if "finetune_epochs" in p and (p["finetune_epochs"] > 0) != (p["finetune_lr"] is not None):
            raise CertificateError("parameters.finetune_lr must be set exactly when "
                                   "finetune_epochs > 0")

    def _verify_accounted(self) -> None:
        import certunlearn_theory as ct
        if not isinstance(self.accountant, Mapping) \
                or not isinstance(self.accountant.get("parameters"), Mapping):
            raise CertificateError(f"method {self.method} needs the accountant's certificate")
        self._check_params_schema()
        try:
            recorded = ct.Certificate.from_dict(self.accountant)
        except (ValueError, KeyError, TypeError) as exc:
            raise CertificateError(f"the accountant's record is malformed: {exc}") from None
        if not same_value(recorded.to_dict(), dict(self.accountant)):
            raise CertificateError("the accountant's record holds fields or values the "
                                   "accountant does not write")
        tail = self.parameters.get("float32_tail_delta") \
            if self.method == "gradient_clipping" else None
        acct_delta: float = self.delta
        if tail is not None:
            recorded_delta = self.accountant.get("delta")
            if not _is_num(recorded_delta) or not 0 < recorded_delta < 1:
                raise CertificateError(f"accountant.delta must be a number in (0, 1), got "
                                       f"{recorded_delta!r}")
            acct_delta = recorded_delta
        try:
            fresh = _issue(self.method, self.sigma, self.eps, acct_delta, self.parameters)
        except KeyError as exc:
            raise CertificateError(f"parameters lack {exc.args[0]!r}") from None
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise CertificateError(
                f"the accountant cannot reproduce the guarantee ({self.eps!r}, {self.delta!r}) "
                f"from the recorded parameters: {exc}") from None
        f, r = fresh.to_dict(), dict(self.accountant)
        for key in ("format", "method", "sigma", "eps", "delta", "parameters"):
            if not same_value(f[key], r.get(key)):
                raise CertificateError(
                    f"the accountant's record does not match the run: accountant.{key} is "
                    f"{r.get(key)!r}, the run's values give {f[key]!r}")
        for key in ("sigma", "eps") if tail is not None else ("sigma", "eps", "delta"):
            if not same_value(getattr(self, key), r.get(key)):
                raise CertificateError(f"{key} = {getattr(self, key)!r} differs from the "
                                       f"accountant's {r.get(key)!r}")
        for key, value in f["parameters"].items():
            if key != "delta" and not same_value(self.parameters.get(key), value):
                raise CertificateError(f"parameters.{key} = {self.parameters.get(key)!r} differs "
                                       f"from the accountant's {value!r}")
        if not same_value(f["derivation"], r.get("derivation")):
            # not bit for bit (another platform's libm, say): the accountant's own check, which
            # recomputes the derivation and allows its documented relative tolerance
            try:
                recorded.verify()
            except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
                raise CertificateError(f"the accountant's certificate does not verify: {exc}") \
                    from None
        if tail is not None and not same_value(self.delta, run_delta(acct_delta, tail)):
            raise CertificateError(
                f"the accountant cannot reproduce delta = {self.delta!r}: the accountant's delta "
                f"{acct_delta!r} plus parameters.float32_tail_delta = {tail!r} is "
                f"{run_delta(acct_delta, tail)!r} (rounded up)")
        self._check_float32_slack()
        if self.method == "dpsgd_group":
            self._check_dpsgd()

    def float32_accounted(self) -> bool:
        """Whether the guarantee covers float32 rounding (a recorded shift slack, THEORY 8.1)."""
        if self.method in ("dpsgd_group", "retrain"):
            return True  # DP-SGD's accountant does not use the shift argument
        return "shift_slack" in self.parameters

    def _check_float32_slack(self) -> None:
        """Refuse a recorded shift slack below what float32 rounding needs (THEORY.md 8.1)."""
        p = self.parameters
        if self.method == "gradient_clipping":
            has = [k for k in ("shift_slack", "float32_tail_delta", "d") if k in p]
            if not has:
                return  # issued before the slack was recorded: listed in not_checked
            if len(has) != 3:
                raise CertificateError(
                    "parameters.shift_slack, float32_tail_delta and d go together (the slack is "
                    f"recomputed from them); the certificate gives only {', '.join(has)}")
            for key, check in (("shift_slack", _pos), ("float32_tail_delta", _pos),
                               ("d", _pos_int)):
                problem = check(p[key])
                if problem:
                    raise CertificateError(f"parameters.{key} must be {problem}, got "
                                           f"{p[key]!r}")
            for key in ("T", "C0", "C1", "gamma", "lam", "batch_size"):
                if not _is_num(p.get(key)):
                    raise CertificateError(f"parameters.{key} must be a number, got "
                                           f"{p.get(key)!r}")
            if not isinstance(self.sigma, float) and not isinstance(self.sigma, int):
                raise CertificateError(f"sigma must be a number, got {self.sigma!r}")
            try:
                need = float32_shift_slack(
                    sigma=self.sigma, T=p["T"], d=p["d"], C0=p["C0"], C1=p["C1"],
                    gamma=p["gamma"], lam=p["lam"], eps=self.eps,
                    delta_tail=p["float32_tail_delta"], batch_size=p["batch_size"])
            except (ValueError, OverflowError) as exc:
                raise CertificateError(f"cannot recompute the float32 shift slack: {exc}") \
                    from None
        elif self.method in ("model_clipping", "output_perturbation"):
            if "shift_slack" not in p:
                return
            radius = p.get("C2") if self.method == "model_clipping" else p.get("C0")
            if not _is_num(radius):
                return  # the schema check reports it
            need = PROJECTION_SLACK * radius
        else:
            return
        if not _is_num(p["shift_slack"]) or not p["shift_slack"] >= need:
            raise CertificateError(
                f"parameters.shift_slack = {p['shift_slack']!r} is below the float32 rounding "
                f"bound {need!r} recomputed from the run's parameters (THEORY.md section 8.1)")

    def _check_dpsgd(self) -> None:
        p = self.parameters
        q = p["expected_batch_size"] / p["train_size"]
        if not same_value(q, p["sampling_rate"]):
            raise CertificateError(f"parameters.sampling_rate = {p['sampling_rate']!r} is not "
                                   f"expected_batch_size / train_size = {q!r}")
        if self.forget_size != p["group_size"]:
            raise CertificateError(f"forget_size = {self.forget_size!r} differs from the "
                                   f"certified group_size = {p['group_size']!r}")
        if self.retain_size != p["train_size"] - p["group_size"]:
            raise CertificateError(f"retain_size = {self.retain_size!r} is not train_size - "
                                   f"group_size = {p['train_size'] - p['group_size']}")

    def _check_signature(self, public_key) -> str:
        if self.signature is None:
            if public_key is not None:
                raise CertificateError("the certificate is unsigned, but a public key was given "
                                       "to check its signature")
            return "unsigned"
        from .signing import verify_record
        fingerprint = verify_record(self.to_dict(), public_key)
        if public_key is None:
            return f"valid, by key {fingerprint} (give --public-key to check who signed)"
        return f"valid, by the given key {fingerprint}"


#: Run-only parameters that verify checks by consistency (DP-SGD sizes and sampling rate).
_DERIVED = {"dpsgd_group": ("expected_batch_size", "train_size"),
            "gradient_clipping": ("float32_tail_delta",)}


def _from_v1(data: Mapping[str, Any]) -> Dict[str, Any]:
    """A ``certunlearn.run/1`` dict in this format's vocabulary (same values, new names).

    Version 1 wrote ``epsilon``, ``dpsgd``, ``steps`` (for T) and ``lr``; it recorded unused slots
    as null or 0 (dropped here) and left ``conversion`` / ``noise_after_projection`` to the
    accountant record (copied from it). Anything else is kept for :meth:`verify` to judge.
    """
    out = dict(data)
    out["format"] = FORMAT
    if "epsilon" in out:
        out["eps"] = out.pop("epsilon")
    method = out.get("method")
    if method in METHOD_ALIASES:
        method = METHOD_ALIASES[method]
    out["method"] = method
    params = out.get("parameters")
    if method in RUN_METHODS and isinstance(params, Mapping):
        acct = out.get("accountant")
        acct_params = acct.get("parameters") if isinstance(acct, Mapping) else None
        acct_params = acct_params if isinstance(acct_params, Mapping) else {}
        renamed = _rename_params(method, params)
        for key in ("conversion", "noise_after_projection"):
            if key in acct_params and key not in renamed:
                renamed[key] = acct_params[key]
        keep = set(_RUN_ONLY[method]) | set(_acct_keys(acct_params))
        out["parameters"] = _no_unused_finetune_lr(
            {k: v for k, v in renamed.items()
             if k in keep or not (v is None or (not isinstance(v, bool) and v == 0))})
    out.setdefault("public_parameters", None)
    out.setdefault("signature", None)
    return out


# ----------------------------------------------------------------------------------------------
# Chains of sequential requests
# ----------------------------------------------------------------------------------------------

def verify_chain(certificates, model=None, *, public_key=None) -> List[VerifyReport]:
    """Check certificates of sequential requests served one on the output of the other.

    Each certificate is verified on its own (THEORY.md section 10.3: each run's guarantee holds
    for any starting point in the C0 ball, so request k is certified against retraining without
    all forget sets up to k, with no composition over requests); then certificate k+1 must
    start from the model certificate k produced (``model_sha256_before`` equal to the previous
    ``model_sha256_after``), and ``model`` must be the last output.
    """
    certificates = list(certificates)
    if not certificates:
        raise CertificateError("a chain needs at least one certificate")
    reports = []
    for k, cert in enumerate(certificates):
        try:
            reports.append(cert.verify(model if k == len(certificates) - 1 else None,
                                       public_key=public_key))
        except CertificateError as exc:
            raise CertificateError(f"certificate {k + 1} of the chain: {exc}") from None
        if k and cert.model_sha256_before != certificates[k - 1].model_sha256_after:
            raise CertificateError(
                f"broken chain: certificate {k + 1} starts from a model with SHA-256 "
                f"{cert.model_sha256_before[:16]}..., but certificate {k} produced "
                f"{certificates[k - 1].model_sha256_after[:16]}...")
    return reports


# Model files live in model_files; these names stay importable from here for existing callers.
from .model_files import load_model_file, save_model_file  # noqa: E402

__all__ += ["save_model_file", "load_model_file"]

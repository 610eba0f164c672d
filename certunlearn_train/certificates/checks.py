"""Verification of a run certificate: every field that can be checked, and what cannot.

:func:`verify_certificate` (``RunCertificate.verify``) checks types and ranges of all fields;
that every parameter which enters the accountant equals the accountant record's; the accountant
record's own derivation; a fresh accountant certificate issued from the recorded parameters; the
float32 rounding slack recomputed from the run's parameters; the weights' hash (and the public
parameters' hash) given the model; the signature if present. It returns a :class:`VerifyReport`
that lists what a certificate alone cannot establish, and raises :class:`CertificateError` (a
``ValueError``) with the reason when a check fails.

Numbers are compared by one rule, :func:`same_value`: a recorded value must equal the value it is
checked against exactly (JSON floats are written by ``repr`` and read back bit for bit). The
only tolerance is inside the accountant, whose ``Certificate.verify`` compares the derivation
numbers it recomputes with transcendental functions to a relative 1e-9.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Tuple

from certunlearn_theory.float32 import PROJECTION_SLACK, float32_shift_slack, run_delta

from ._values import SHA_RE, CertificateError, check_utc_time, is_num, pos, pos_int, same_value
from .buffer_checks import check_buffers_model, check_buffers_types
from .hashing import public_parameters_record, weights_sha256
from .ledger_record import check_entry
from .schema import (
    DERIVED,
    FLOAT32_FIELDS,
    FORMAT,
    FORMAT_V1,
    NOT_CHECKABLE,
    OPTIONAL_RUN,
    RUN_METHODS,
    RUN_ONLY,
    acct_keys,
    issue_accountant,
)
from .signing import verify_record

__all__ = ["VerifyReport", "NotVerifiableError", "verify_certificate", "float32_accounted",
           "private_parameter_count", "eps_with_float32_rounding"]


class NotVerifiableError(CertificateError):
    """Every check passed, but a guarantee cannot be checked from a certificate (``retrain``:
    exact retraining). ``reports`` holds the :class:`VerifyReport` of each certificate checked
    (one, or one per link of a chain)."""

    def __init__(self, message: str, reports: "List[VerifyReport]"):
        super().__init__(message)
        self.reports = list(reports)


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """The outcome of :meth:`RunCertificate.verify` (failures raise instead).

    Attributes:
        guarantee_recomputed: the accountant reproduced (eps, delta) from the parameters (False
            for ``retrain``: exact retraining cannot be checked from a certificate).
        model_checked: a model was given and its SHA-256 (and public parameters) matched.
        signature: ``"unsigned"``, or how the signature was checked: against the given key,
            or (no key given) only against the key it carries, whose owner is unknown.
        not_checked: ``(field, reason)`` for every claim taken on trust.
        warnings: what the reader must know before relying on the guarantee, most important
            first (an older format whose guarantee omits float32 rounding, and the eps it would
            have with it).
    """
    method: str
    eps: float
    delta: float
    guarantee_recomputed: bool
    model_checked: bool
    signature: str
    not_checked: Tuple[Tuple[str, str], ...]
    warnings: Tuple[str, ...] = ()

    def not_checked_fields(self) -> List[str]:
        return [f for f, _ in self.not_checked]


# -- verification -----------------------------------------------------------------------

def verify_certificate(cert, model=None, *, public_key=None,
                       allow_unverifiable: bool = False) -> VerifyReport:
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
        NotVerifiableError: every check passed, but the method's guarantee cannot be checked
            from a certificate (``retrain``), unless ``allow_unverifiable`` (then the report
            says ``guarantee_recomputed=False``).
        CertificateError: with the first reason found.
    """
    not_checked: Dict[str, str] = {}
    check_types(cert)
    for name, why in NOT_CHECKABLE.items():
        if name != "accountant.version" or cert.accountant is not None:
            not_checked[name] = why
    if cert.method == "retrain":
        check_params_schema(cert)
        recomputed = False
        not_checked["method"] = ("a retrain claims exact unlearning; exact retraining "
                                 "cannot be checked from a certificate")
    else:
        verify_accounted(cert)
        recomputed = True
    warnings: List[str] = []
    if not float32_accounted(cert):
        with_rounding = eps_with_float32_rounding(cert, model)
        warnings.append(
            f"format {cert.read_from}: the guarantee omits float32 rounding (issued before the "
            f"shift slack of THEORY.md section 8.1 was recorded) and assumes exact arithmetic; "
            + (f"with it, eps would be {with_rounding} at the same delta" if with_rounding
               else "give the model (as a module) to compute the eps with it"))
        not_checked["float32_rounding"] = warnings[-1]
    accounted = set() if cert.accountant is None else \
        set(acct_keys(cert.accountant["parameters"]))
    for key in cert.parameters:
        if key not in accounted and key not in DERIVED.get(cert.method, ()):
            not_checked[f"parameters.{key}"] = "describes the run; does not enter the " \
                                               "guarantee"
    if cert.method == "gradient_clipping" and "shift_slack" in cert.parameters:
        not_checked["parameters.batch_size"] = (
            "enters the float32 shift slack, recomputed from it: a batch size smaller than the "
            "run used would understate the slack, and no certificate can show the batch size "
            "actually used (only a signature protects it)")
    d_count = private_parameter_count(cert, model)
    if cert.method == "gradient_clipping" and "d" in cert.parameters:
        if d_count is None:
            not_checked["parameters.d"] = (
                "the number of private parameters, from which the float32 shift slack is "
                "recomputed: counted only when the model is given as a module" +
                (" (it was given as weights only)" if model is not None else ""))
        elif d_count == cert.parameters["d"]:
            not_checked.pop("parameters.d", None)  # counted from the model given
        else:
            raise CertificateError(
                f"parameters.d = {cert.parameters['d']!r} is not the model's number of private "
                f"parameters, {d_count} (its parameters less the public ones); d enters the "
                f"float32 shift slack")
    model_checked = False
    if model is not None:
        state = model.state_dict() if hasattr(model, "state_dict") else model
        got = weights_sha256(state)
        if got != cert.model_sha256_after:
            raise CertificateError(
                f"model weights do not match the certificate: SHA-256 {got[:16]}... but the "
                f"certificate records {cert.model_sha256_after[:16]}...")
        if cert.public_parameters is not None:
            names = cert.public_parameters["names"]
            rec = public_parameters_record(state, names)
            if rec["sha256"] != cert.public_parameters["sha256"]:
                raise CertificateError("the model's public parameters do not match the "
                                       "certificate's public_parameters.sha256")
        model_checked = True
    else:
        not_checked["model_sha256_after"] = "no model given"
        if cert.public_parameters is not None:
            not_checked["public_parameters"] = "no model given"
    if cert.public_parameters is not None:
        not_checked["public_parameters.names"] = (
            "that these parameters are public (fixed independently of the private data) "
            "is the user's declaration")
        if "assumption" in cert.public_parameters:
            not_checked["public_parameters.assumption"] = "the issuer's words for that " \
                                                          "declaration"
    if cert.ledger is not None:
        check_ledger(cert)
        not_checked["ledger.forget_sha256"] = (
            "that the run's forget set is the one hashed here and its retain set the training "
            "set less every forget set so far (the data are not in the certificate; the ledger "
            "file holds the indices)")
    check_buffers_model(cert, model, not_checked)
    signature = check_signature(cert, public_key)
    if signature == "unsigned":
        not_checked["signature"] = ("unsigned: anyone could have edited the unchecked fields "
                                    "(noise_seed_user_supplied, the set sizes, batch_size)")
    elif public_key is None:
        not_checked["signature.signer"] = ("who signed: the signature matches the key it "
                                           "carries, and anyone can make such a key; give "
                                           "--public-key to check the signer")
    report = VerifyReport(method=cert.method, eps=cert.eps, delta=cert.delta,
                          guarantee_recomputed=recomputed, model_checked=model_checked,
                          signature=signature, not_checked=tuple(not_checked.items()),
                          warnings=tuple(warnings))
    if not recomputed and not allow_unverifiable:
        raise NotVerifiableError(
            f"NOT VERIFIABLE: {cert.method} claims exact unlearning; exact retraining cannot be "
            f"checked from a certificate", [report])
    return report


def check_ledger(cert) -> None:
    """The ledger entry's shape, and the sizes it accounts for: the run's forget set is the
    entry's, and its retain set the training set less every forget set so far."""
    entry = cert.ledger
    check_entry(entry)
    if cert.forget_size != entry["forget_size"]:
        raise CertificateError(f"forget_size = {cert.forget_size!r} differs from the ledger's "
                               f"forget_size = {entry['forget_size']!r}")
    want = entry["train_size"] - entry["forgotten_before"] - entry["forget_size"]
    if cert.retain_size != want:
        raise CertificateError(
            f"retain_size = {cert.retain_size!r} is not the training set less every forget set "
            f"so far: {entry['train_size']} - {entry['forgotten_before']} - "
            f"{entry['forget_size']} = {want}")


def private_parameter_count(cert, model) -> Optional[int]:
    """The model's private parameters (all its parameters less the public ones), counted; None
    when ``model`` is not a module (weights alone do not say which entries are parameters)."""
    if model is None or not callable(getattr(model, "named_parameters", None)):
        return None
    public = set(cert.public_parameters["names"]) if isinstance(cert.public_parameters,
                                                                Mapping) else set()
    return sum(int(p.numel()) for name, p in model.named_parameters() if name not in public)


def eps_with_float32_rounding(cert, model=None) -> Optional[str]:
    """The eps (as safe-side text) a certificate without the float32 slack would have with it,
    at its recorded delta; None when it cannot be computed (gradient clipping needs the number
    of private parameters, counted from ``model`` as a module)."""
    from certunlearn_theory import epsilon_for, format_up, split_tail_delta
    p = cert.parameters
    try:
        if cert.method == "output_perturbation":
            eps = epsilon_for(cert.sigma, cert.delta, None, p["C0"], None, None,
                              method="output_perturbation",
                              shift_slack=PROJECTION_SLACK * p["C0"])
        elif cert.method == "model_clipping":
            eps = epsilon_for(cert.sigma, cert.delta, p["T"], p["C0"], p.get("C1"),
                              p.get("gamma"), p.get("lam", 0.0), method="model_clipping",
                              C2=p["C2"], sigma0=p.get("sigma0", 0.0),
                              noise_after_projection=p.get("noise_after_projection", True),
                              shift_slack=PROJECTION_SLACK * p["C2"])
        elif cert.method == "gradient_clipping":
            d = private_parameter_count(cert, model)
            if d is None:
                return None
            acct_delta, tail = split_tail_delta(cert.delta)
            eps = float(cert.eps)
            for _ in range(20):  # the slack grows with eps: iterate to a consistent pair
                slack = float32_shift_slack(
                    sigma=cert.sigma, T=p["T"], d=d, C0=p["C0"], C1=p["C1"], gamma=p["gamma"],
                    lam=p["lam"], eps=eps, delta_tail=tail, batch_size=p["batch_size"])
                new = float(epsilon_for(cert.sigma, acct_delta, p["T"], p["C0"], p["C1"],
                                        p["gamma"], p["lam"], sigma0=p.get("sigma0", 0.0),
                                        conversion=p.get("conversion", "improved"),
                                        shift_slack=slack))
                if new <= eps:  # the slack was computed at an eps at least this one
                    eps = new
                    break
                eps = new
            else:
                return None
        else:
            return None
    except (KeyError, TypeError, ValueError, ArithmeticError):
        return None
    return format_up(float(eps), 6)


def check_types(cert) -> None:
    if cert.format != FORMAT or cert.read_from not in (FORMAT, FORMAT_V1):
        raise CertificateError(f"unsupported certificate format {cert.format!r} "
                               f"(this library reads {FORMAT!r})")
    if cert.method not in RUN_METHODS:
        raise CertificateError(f"method must be one of {', '.join(RUN_METHODS)}, got "
                               f"{cert.method!r}")
    for name in ("eps", "delta"):
        v = getattr(cert, name)
        if not is_num(v) or v < 0:
            raise CertificateError(f"{name} must be a finite number >= 0, got {v!r}")
    if cert.delta >= 1:
        raise CertificateError(f"delta must be < 1, got {cert.delta!r}")
    if cert.method == "retrain":
        if cert.sigma is not None:
            raise CertificateError(f"a retrain certificate has no sigma, got {cert.sigma!r}")
    elif not is_num(cert.sigma) or cert.sigma <= 0:
        raise CertificateError(f"sigma must be a finite number > 0, got {cert.sigma!r}")
    if not isinstance(cert.parameters, Mapping) \
            or not all(isinstance(k, str) for k in cert.parameters):
        raise CertificateError("parameters must be an object")
    if pos_int(cert.retain_size):
        raise CertificateError(f"retain_size must be an integer >= 1, got "
                               f"{cert.retain_size!r}")
    if cert.forget_size is not None and pos_int(cert.forget_size):
        raise CertificateError(f"forget_size must be an integer >= 1 or null, got "
                               f"{cert.forget_size!r}")
    for name in ("model_sha256_before", "model_sha256_after"):
        v = getattr(cert, name)
        if not isinstance(v, str) or not SHA_RE.match(v):
            raise CertificateError(f"{name} must be 64 lowercase hex digits, got {v!r}")
    if cert.public_parameters is not None:
        pp = cert.public_parameters
        names = pp.get("names") if isinstance(pp, Mapping) else None
        if not isinstance(pp, Mapping) or not {"names", "sha256"} <= set(pp) \
                or not set(pp) <= {"names", "sha256", "assumption"} \
                or not isinstance(pp.get("assumption", ""), str) \
                or not isinstance(names, list) or not names \
                or not all(isinstance(n, str) and n for n in names) \
                or len(set(names)) != len(names) \
                or not isinstance(pp["sha256"], str) or not SHA_RE.match(pp["sha256"]):
            raise CertificateError("public_parameters must be null or {\"names\": [distinct "
                                   "parameter names], \"sha256\": 64 hex digits, "
                                   "optionally \"assumption\": text}")
    check_buffers_types(cert.buffers)
    if not isinstance(cert.library_version, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str)
            for k, v in cert.library_version.items()):
        raise CertificateError("library_version must map names to version strings")
    if not isinstance(cert.noise_seed_user_supplied, bool):
        raise CertificateError(f"noise_seed_user_supplied must be true or false, got "
                               f"{cert.noise_seed_user_supplied!r}")
    check_utc_time(cert.created_utc)
    if cert.method == "retrain" and cert.accountant is not None:
        raise CertificateError("a retrain certificate has no accountant record")
    if cert.method == "retrain" and (cert.eps != 0 or cert.delta != 0):
        raise CertificateError("a retrain certificate claims exact unlearning: eps and "
                               "delta must be 0")


def check_params_schema(cert) -> None:
    accounted = set() if cert.accountant is None else \
        set(acct_keys(cert.accountant.get("parameters") or {}))
    run_only = RUN_ONLY[cert.method]
    for key, value in cert.parameters.items():
        if key in accounted:
            continue
        if key not in run_only:
            raise CertificateError(f"parameters.{key} does not belong to method "
                                   f"{cert.method}")
        problem = run_only[key](value)
        if problem:
            raise CertificateError(f"parameters.{key} must be {problem}, got {value!r}")
    missing = sorted((accounted | set(run_only)) - OPTIONAL_RUN - set(cert.parameters))
    if missing:
        raise CertificateError(f"parameters lack {', '.join(missing)} (method "
                               f"{cert.method})")
    p = cert.parameters
    if "finetune_epochs" in p and (p["finetune_epochs"] > 0) != (p["finetune_lr"] is not None):
        raise CertificateError("parameters.finetune_lr must be set exactly when "
                               "finetune_epochs > 0")


def verify_accounted(cert) -> None:
    import certunlearn_theory as ct
    if not isinstance(cert.accountant, Mapping) \
            or not isinstance(cert.accountant.get("parameters"), Mapping):
        raise CertificateError(f"method {cert.method} needs the accountant's certificate")
    check_params_schema(cert)
    try:
        recorded = ct.Certificate.from_dict(cert.accountant)
    except (ValueError, KeyError, TypeError) as exc:
        raise CertificateError(f"the accountant's record is malformed: {exc}") from None
    if not same_value(recorded.to_dict(), dict(cert.accountant)):
        raise CertificateError("the accountant's record holds fields or values the "
                               "accountant does not write")
    tail = cert.parameters.get("float32_tail_delta") \
        if cert.method == "gradient_clipping" else None
    acct_delta: float = cert.delta
    if tail is not None:
        recorded_delta = cert.accountant.get("delta")
        if not is_num(recorded_delta) or not 0 < recorded_delta < 1:
            raise CertificateError(f"accountant.delta must be a number in (0, 1), got "
                                   f"{recorded_delta!r}")
        acct_delta = recorded_delta
    try:
        fresh = issue_accountant(cert.method, cert.sigma, cert.eps, acct_delta, cert.parameters)
    except KeyError as exc:
        raise CertificateError(f"parameters lack {exc.args[0]!r}") from None
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise CertificateError(
            f"the accountant cannot reproduce the guarantee ({cert.eps!r}, {cert.delta!r}) "
            f"from the recorded parameters: {exc}") from None
    f, r = fresh.to_dict(), dict(cert.accountant)
    for key in ("format", "method", "sigma", "eps", "delta", "parameters"):
        if not same_value(f[key], r.get(key)):
            raise CertificateError(
                f"the accountant's record does not match the run: accountant.{key} is "
                f"{r.get(key)!r}, the run's values give {f[key]!r}")
    for key in ("sigma", "eps") if tail is not None else ("sigma", "eps", "delta"):
        if not same_value(getattr(cert, key), r.get(key)):
            raise CertificateError(f"{key} = {getattr(cert, key)!r} differs from the "
                                   f"accountant's {r.get(key)!r}")
    for key, value in f["parameters"].items():
        if key != "delta" and not same_value(cert.parameters.get(key), value):
            raise CertificateError(f"parameters.{key} = {cert.parameters.get(key)!r} differs "
                                   f"from the accountant's {value!r}")
    if not same_value(f["derivation"], r.get("derivation")):
        # not bit for bit (another platform's libm, say): the accountant's own check, which
        # recomputes the derivation and allows its documented relative tolerance
        try:
            recorded.verify()
        except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
            raise CertificateError(f"the accountant's certificate does not verify: {exc}") \
                from None
    if tail is not None and not same_value(cert.delta, run_delta(acct_delta, tail)):
        raise CertificateError(
            f"the accountant cannot reproduce delta = {cert.delta!r}: the accountant's delta "
            f"{acct_delta!r} plus parameters.float32_tail_delta = {tail!r} is "
            f"{run_delta(acct_delta, tail)!r} (rounded up)")
    check_float32_slack(cert)
    if cert.method == "dpsgd_group":
        check_dpsgd(cert)


def float32_accounted(cert) -> bool:
    """Whether the guarantee covers float32 rounding (a recorded shift slack, THEORY 8.1)."""
    if cert.method in ("dpsgd_group", "retrain"):
        return True  # DP-SGD's accountant does not use the shift argument
    return "shift_slack" in cert.parameters


def check_float32_slack(cert) -> None:
    """Refuse a recorded shift slack below what float32 rounding needs (THEORY.md 8.1)."""
    p = cert.parameters
    required = FLOAT32_FIELDS.get(cert.method, ())
    if cert.read_from == FORMAT and any(k not in p for k in required):
        raise CertificateError(
            f"a certificate of format {FORMAT} records the float32 rounding slack its guarantee "
            f"depends on (THEORY.md section 8.1), but parameters lack "
            f"{', '.join(k for k in required if k not in p)}")
    if cert.method == "gradient_clipping":
        has = [k for k in ("shift_slack", "float32_tail_delta", "d") if k in p]
        if not has:
            return  # an older format, issued before the slack was recorded: a warning
        if len(has) != 3:
            raise CertificateError(
                "parameters.shift_slack, float32_tail_delta and d go together (the slack is "
                f"recomputed from them); the certificate gives only {', '.join(has)}")
        for key, check in (("shift_slack", pos), ("float32_tail_delta", pos),
                           ("d", pos_int)):
            problem = check(p[key])
            if problem:
                raise CertificateError(f"parameters.{key} must be {problem}, got "
                                       f"{p[key]!r}")
        for key in ("T", "C0", "C1", "gamma", "lam", "batch_size"):
            if not is_num(p.get(key)):
                raise CertificateError(f"parameters.{key} must be a number, got "
                                       f"{p.get(key)!r}")
        if not isinstance(cert.sigma, float) and not isinstance(cert.sigma, int):
            raise CertificateError(f"sigma must be a number, got {cert.sigma!r}")
        try:
            need = float32_shift_slack(
                sigma=cert.sigma, T=p["T"], d=p["d"], C0=p["C0"], C1=p["C1"],
                gamma=p["gamma"], lam=p["lam"], eps=cert.eps,
                delta_tail=p["float32_tail_delta"], batch_size=p["batch_size"])
        except (ValueError, OverflowError) as exc:
            raise CertificateError(f"cannot recompute the float32 shift slack: {exc}") \
                from None
    elif cert.method in ("model_clipping", "output_perturbation"):
        if "shift_slack" not in p:
            return
        radius = p.get("C2") if cert.method == "model_clipping" else p.get("C0")
        if not is_num(radius):
            return  # the schema check reports it
        need = PROJECTION_SLACK * radius
    else:
        return
    if not is_num(p["shift_slack"]) or not p["shift_slack"] >= need:
        raise CertificateError(
            f"parameters.shift_slack = {p['shift_slack']!r} is below the float32 rounding "
            f"bound {need!r} recomputed from the run's parameters (THEORY.md section 8.1)")


def check_dpsgd(cert) -> None:
    p = cert.parameters
    q = p["expected_batch_size"] / p["train_size"]
    if not same_value(q, p["sampling_rate"]):
        raise CertificateError(f"parameters.sampling_rate = {p['sampling_rate']!r} is not "
                               f"expected_batch_size / train_size = {q!r}")
    if cert.forget_size != p["group_size"]:
        raise CertificateError(f"forget_size = {cert.forget_size!r} differs from the "
                               f"certified group_size = {p['group_size']!r}")
    if cert.retain_size != p["train_size"] - p["group_size"]:
        raise CertificateError(f"retain_size = {cert.retain_size!r} is not train_size - "
                               f"group_size = {p['train_size'] - p['group_size']}")


def check_signature(cert, public_key) -> str:
    if cert.signature is None:
        if public_key is not None:
            raise CertificateError("the certificate is unsigned, but a public key was given "
                                   "to check its signature")
        return "unsigned"
    fingerprint = verify_record(cert.to_dict(), public_key)
    if public_key is None:
        return (f"signed by an unknown key {fingerprint} (it matches the certificate, but anyone "
                f"can sign; give --public-key to check who signed)")
    return f"valid, by the given key {fingerprint}"

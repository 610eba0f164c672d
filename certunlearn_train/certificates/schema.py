"""What a run certificate of each method records: formats, methods, parameters, renames.

Vocabulary: the accountant's names (``certunlearn_theory.Certificate``): ``eps``, ``delta``,
``sigma``; parameters ``T``, ``C0``, ``C1``, ``C2``, ``gamma`` (the step size), ``lam``,
``sigma0``; DP-SGD: ``noise_multiplier``, ``sampling_rate``, ``steps``, ``group_size``. Methods:
``gradient_clipping``, ``model_clipping``, ``output_perturbation``, ``dpsgd_group``, ``retrain``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from ._values import CertificateError, clip_mode, nonneg, opt_pos, pos, pos_int, same_value

__all__ = ["FORMAT", "FORMAT_V1", "ACCOUNTED_METHODS", "RUN_METHODS", "METHOD_ALIASES",
           "RUN_ONLY", "OPTIONAL_RUN", "PARAM_RENAMES", "DERIVED", "NOT_CHECKABLE",
           "FLOAT32_FIELDS", "rename_params", "issue_accountant", "acct_keys",
           "normalise_params", "no_unused_finetune_lr", "library_versions",
           "NOISY_PHASE_STATISTICS", "BUFFERS_AFTERWARDS"]

FORMAT = "certunlearn.run/2"
FORMAT_V1 = "certunlearn.run/1"
#: Methods whose guarantee the accountant computes from (sigma, parameters).
ACCOUNTED_METHODS = ("gradient_clipping", "model_clipping", "output_perturbation", "dpsgd_group")
RUN_METHODS = ACCOUNTED_METHODS + ("retrain",)
#: Other names accepted for a method when a certificate is built or read (mapped on input).
METHOD_ALIASES = {"dpsgd": "dpsgd_group"}
#: Parameters from which the float32 rounding slack is recomputed, by method (THEORY.md 8.1).
FLOAT32_FIELDS = {"gradient_clipping": ("shift_slack", "float32_tail_delta", "d"),
                  "model_clipping": ("shift_slack",), "output_perturbation": ("shift_slack",)}


_FINETUNE = {"batch_size": pos_int, "finetune_epochs": nonneg, "finetune_lr": opt_pos,
             "finetune_batch_size": pos_int}
#: Parameters recorded for each method that do not enter the accountant (checked for type and
#: range only); every other parameter must be one the accountant records.
RUN_ONLY = {
    "gradient_clipping": dict(_FINETUNE, clip=clip_mode, float32_tail_delta=pos, d=pos_int),
    "model_clipping": dict(_FINETUNE, clip=clip_mode, C1=opt_pos, gamma=pos, lam=nonneg),
    "output_perturbation": dict(_FINETUNE),
    "dpsgd_group": {"clip": pos, "gamma": pos, "expected_batch_size": pos_int,
                    "train_size": pos_int},
    "retrain": {"epochs": nonneg, "gamma": pos, "batch_size": pos_int},
}
for _schema in RUN_ONLY.values():  # processes of a data-parallel run (1: one process)
    _schema["world_size"] = pos_int
#: Run-only parameters a certificate may leave out (recorded only when they differ from a default,
#: or absent from certificates written before they existed).
OPTIONAL_RUN = frozenset({"finetune_batch_size", "world_size", "float32_tail_delta", "d"})
#: The certificate's ``buffers`` field (THEORY.md section 10.4): what the noisy phase used for
#: the private running statistics, and what may have happened to them afterwards.
NOISY_PHASE_STATISTICS = "mean 0, variance 1 in eval mode (an affine layer)"
BUFFERS_AFTERWARDS = ("re-estimated on the retain set through the noisy model",
                      "re-estimated on the retain set through the noisy model, then updated by "
                      "fine-tuning on the retain set")
#: Names of format certunlearn.run/1 (and of the callers) -> this format's (the accountant's).
PARAM_RENAMES = {"lr": "gamma", "steps": "T"}


def rename_params(method: str, params: Mapping[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in params.items():
        new = key if (method == "dpsgd_group" and key == "steps") \
            else PARAM_RENAMES.get(key, key)  # the accountant's DP-SGD record says steps
        if new in out and not same_value(out[new], value):
            raise CertificateError(f"parameters give {key!r} and {new!r} with different values")
        out[new] = value
    return out


def issue_accountant(method: str, sigma, eps, delta, p: Mapping[str, Any]):
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


def acct_keys(acct_params: Mapping[str, Any]) -> List[str]:
    return [k for k in acct_params if k != "delta"]


def normalise_params(method: str, params: Mapping[str, Any],
                      acct_params: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The run's parameters in this format: accountant inputs as the accountant records them,
    then the method's run-only parameters; a given key outside both is dropped when it is unset
    (None or 0, what the v1 baselines wrote for unused slots) and refused otherwise."""
    params = rename_params(method, params)
    run_only = RUN_ONLY[method]
    out: Dict[str, Any] = {}
    if acct_params is not None:
        for key in acct_keys(acct_params):
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
    return no_unused_finetune_lr(out)


def no_unused_finetune_lr(params: Dict[str, Any]) -> Dict[str, Any]:
    """A fine-tuning step size is recorded only when fine-tuning ran (finetune_epochs > 0)."""
    if params.get("finetune_epochs") == 0 and params.get("finetune_lr") is not None:
        params = dict(params, finetune_lr=None)
    return params


#: Run-only parameters that verify checks by consistency (DP-SGD sizes and sampling rate).
DERIVED = {"dpsgd_group": ("expected_batch_size", "train_size"),
            "gradient_clipping": ("float32_tail_delta",)}

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


def library_versions() -> Dict[str, str]:
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

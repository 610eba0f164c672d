"""Run certificates: the accountant's certificate plus everything needed to audit one run.

One concept per module, imports pointing down this list:

- :mod:`._values`: the error type, the one comparison rule (:func:`same_value`), predicates;
- :mod:`.hashing`: what a certificate binds (weights, public parameters, signed bytes);
- :mod:`.schema`: formats, methods and the parameters each records;
- :mod:`.signing`: Ed25519 keys and signatures;
- :mod:`.checks`: verification (:func:`verify_certificate`, :class:`VerifyReport`);
- :mod:`.v1`: reading the previous format;
- :mod:`.record`: :class:`RunCertificate`, its JSON and files;
- :mod:`.building`: :func:`build_run_certificate`;
- :mod:`.ledger_record`: the ledger entry a request's certificate binds;
- :mod:`.chain`: :func:`verify_chain` for sequential requests.
- :mod:`.buffer_checks`: the ``buffers`` field (used by :mod:`.checks`);
- :mod:`.postprocess`: the record of the user's own post-processing (imported on its own).

The float32 rounding bound (``float32_shift_slack``, ``split_tail_delta``, ``run_delta``) is the
accountant's (:mod:`certunlearn_theory.float32`); its names stay importable from here.
"""
from certunlearn_theory.float32 import (
    FLOAT32_U,
    PROJECTION_SLACK,
    TAIL_DELTA_SHARE,
    float32_shift_slack,
    run_delta,
    split_tail_delta,
)

from ..files import atomic_write_bytes
from ..model_files import load_model_file, save_model_file
from ._values import CertificateError, same_value
from .building import build_run_certificate
from .chain import chain_links_authenticated, verify_chain
from .checks import NotVerifiableError, VerifyReport, verify_certificate
from .hashing import canonical_bytes, public_parameters_record, weights_sha256
from .ledger_record import GENESIS, entry_hash, indices_sha256
from .record import OPTIONAL_FIELDS, RunCertificate
from .schema import ACCOUNTED_METHODS, FORMAT, FORMAT_V1, METHOD_ALIASES, NOT_CHECKABLE, RUN_METHODS

__all__ = ["RunCertificate", "OPTIONAL_FIELDS", "CertificateError", "NotVerifiableError", "VerifyReport",
           "chain_links_authenticated", "build_run_certificate",
           "verify_certificate", "weights_sha256", "public_parameters_record",
           "atomic_write_bytes", "same_value", "canonical_bytes", "verify_chain", "FORMAT",
           "FORMAT_V1", "RUN_METHODS", "ACCOUNTED_METHODS", "METHOD_ALIASES", "NOT_CHECKABLE",
           "float32_shift_slack", "split_tail_delta", "run_delta", "FLOAT32_U",
           "TAIL_DELTA_SHARE", "GENESIS", "entry_hash", "indices_sha256", "PROJECTION_SLACK",
           "save_model_file", "load_model_file"]

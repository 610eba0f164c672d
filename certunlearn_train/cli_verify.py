"""``certunlearn verify`` and ``certunlearn keygen``."""
from __future__ import annotations

import os
import sys
from typing import Optional

from .cli_common import (
    EXIT_FAILED,
    EXIT_NOT_VERIFIABLE,
    EXIT_OK,
    OutputFolder,
    UsageError,
    check_output_file,
    fmt_guarantee,
)

__all__ = ["verify_command", "keygen_command"]


def sniff(path: str) -> str:
    """'model', 'json' or 'other' from the first bytes of a file ('' if unreadable)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return ""
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "model"
    return "json" if head.lstrip()[:1] == b"{" else "other"


def model_to_verify(path: str, factory: Optional[str]):
    """The model file as a module when that needs no user code (a bundled architecture) or the
    user named a factory; otherwise its weights alone (the parameter count is then unchecked)."""
    from .model_files import ModelFileError, load_model, load_model_file, model_from_arch
    state, arch = load_model_file(path)
    if factory:
        return load_model(path, factory)[0]
    if arch.get("name") and not arch.get("factory"):
        try:
            return model_from_arch(arch, state)
        except ModelFileError:
            return state  # the weights' hash is still checked; the count is listed as unchecked
    return state


def verify_command(args) -> int:
    from .certificates import (
        CertificateError,
        NotVerifiableError,
        RunCertificate,
        chain_links_authenticated,
        verify_chain,
    )
    from .ledger import Ledger, LedgerError
    from .model_files import ModelFileError
    files = args.files
    if not args.chain and len(files) == 3:
        return verify_postprocess_command(args)
    if not args.chain and len(files) != 2:
        raise UsageError(f"give CERT MODEL (or --chain CERT... MODEL), "
                         f"got {len(files)} path(s)")
    if len(files) < 2:
        raise UsageError("--chain needs at least one certificate and "
                         "the final model")
    cert_paths, model_path = files[:-1], files[-1]
    if sniff(cert_paths[0]) == "model" and sniff(model_path) == "json":
        raise UsageError("the arguments look swapped: the first is a "
                         "model file and the last a JSON file (usage: certunlearn verify CERT "
                         "MODEL)")
    try:
        certs = [RunCertificate.load(p) for p in cert_paths]
        model = model_to_verify(model_path, getattr(args, "model_factory", None))
        try:
            if args.chain:
                reports = verify_chain(certs, model, public_key=args.public_key)
            else:
                reports = [certs[0].verify(model, public_key=args.public_key)]
        except NotVerifiableError as exc:
            reports = exc.reports
        if getattr(args, "ledger", None):
            Ledger.load(args.ledger).check_certificates(certs)
    except (CertificateError, ModelFileError, LedgerError) as exc:
        print(f"certunlearn verify: FAILED: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for k, r in enumerate(reports, 1):  # what must be read before the guarantee, first
        for text in r.warnings:
            where = f"certificate {k}: " if args.chain else ""
            print(f"certunlearn verify: WARNING: {where}{text}", file=sys.stderr)
    sha = certs[-1].model_sha256_after[:16]
    if args.chain:
        for k, (c, r) in enumerate(zip(certs, reports), 1):
            what = "recomputed by the accountant" if r.guarantee_recomputed else \
                "NOT VERIFIABLE (exact retraining cannot be checked from a certificate)"
            print(f"certificate {k}: {c.method}, {fmt_guarantee(c.eps, c.delta)}-unlearning "
                  f"{what}; signature: {r.signature}")
        links = ("the links are covered by the certificates' signatures"
                 if chain_links_authenticated(certs) else
                 "the links are unauthenticated (unsigned certificates: a starting hash can be "
                 "edited to connect two runs; sign the requests to bind them)")
        print(f"chain: {len(certs)} certificates, each starting from the previous one's output; "
              f"{links}; the final model matches (SHA-256 {sha}...). Each request's retain set "
              f"is the training set less every forget set so far (ledger entries "
              f"{(certs[0].ledger or {}).get('request')} to "
              f"{(certs[-1].ledger or {}).get('request')}"
              + (f", found in {args.ledger}" if getattr(args, "ledger", None) else "") +
              "), and each request is certified on its own against retraining without all "
              "forget sets so far (no composition)."
              if len(certs) > 1 else
              f"{links}; the final model matches (SHA-256 {sha}...).")
    else:
        c, r = certs[0], reports[0]
        if r.guarantee_recomputed:
            print(f"certunlearn verify: OK: {c.method}, {fmt_guarantee(c.eps, c.delta)}-"
                  f"unlearning recomputed by the accountant from the certificate's parameters; "
                  f"model weights match (SHA-256 {sha}...)")
        else:
            print(f"certunlearn verify: NOT VERIFIABLE: {c.method} claims exact unlearning; "
                  f"exact retraining cannot be checked from a certificate (only the model "
                  f"hash was: the weights match, SHA-256 {sha}...)")
        print(f"  signature: {r.signature}")
        for field, why in r.not_checked:
            print(f"  not checked: {field}: {why}")
    if any(c.noise_seed_user_supplied for c in certs):
        print("warning: a run used a caller-chosen noise seed: it is a reproduction, not a "
              "private release", file=sys.stderr)
    if not all(r.guarantee_recomputed for r in reports):
        return EXIT_NOT_VERIFIABLE
    return EXIT_OK


def verify_postprocess_command(args) -> int:
    """``certunlearn verify CERT POSTPROCESS.json MODEL``: the noisy phase's certificate, the
    record of the user's post-processing, the final model."""
    from .certificates import CertificateError, NotVerifiableError, RunCertificate
    from .certificates.postprocess import PostprocessRecord, verify_postprocess
    from .model_files import ModelFileError, load_model_file
    cert_path, post_path, model_path = args.files
    try:
        cert = RunCertificate.load(cert_path)
        record = PostprocessRecord.load(post_path)
        state, _ = load_model_file(model_path)
        report = verify_postprocess(record, cert, model=state, public_key=args.public_key)
    except NotVerifiableError as exc:
        print(f"certunlearn verify: NOT VERIFIABLE: {exc}", file=sys.stderr)
        return EXIT_NOT_VERIFIABLE
    except (CertificateError, ModelFileError) as exc:
        print(f"certunlearn verify: FAILED: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for text in report.certificate.warnings:
        print(f"certunlearn verify: WARNING: {text}", file=sys.stderr)
    print(f"certunlearn verify: OK: {cert.method}, {fmt_guarantee(cert.eps, cert.delta)}-"
          f"unlearning recomputed by the accountant from the certificate's parameters, carried "
          f"unchanged through post-processing; the final model matches the record (SHA-256 "
          f"{record.model_sha256[:16]}...)")
    print(f"  signature: {report.certificate.signature}")
    for field, why in report.not_checked:
        print(f"  not checked: {field}: {why}")
    if cert.noise_seed_user_supplied:
        print("warning: the run used a caller-chosen noise seed: it is a reproduction, not a "
              "private release", file=sys.stderr)
    return EXIT_OK


def keygen_command(args) -> int:
    from .signing import generate_key_files
    if os.path.isdir(args.out):
        raise UsageError(f"--out {args.out!r} is an existing directory; give a file path")
    with OutputFolder(os.path.dirname(os.path.abspath(args.out))):  # keys/ made if missing
        check_output_file(args.out, "--out")
        fp = generate_key_files(args.out)
    print(f"wrote private key {args.out} (mode 0600; keep it secret) and public key "
          f"{args.out}.pub (fingerprint {fp})")
    return 0


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------


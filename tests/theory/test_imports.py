"""The accountant is pure Python on mpmath: importing it loads no torch, scipy or numpy, and its
modules share helpers only under public (documented) names."""
import ast
import subprocess
import sys
from pathlib import Path

import certunlearn_theory

PACKAGE = Path(certunlearn_theory.__file__).parent


def test_import_loads_no_torch_scipy_or_numpy():
    code = ("import sys, certunlearn_theory; "
            "print(sorted(m for m in ('torch', 'scipy', 'numpy') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_no_private_name_crosses_a_module_boundary():
    crossing = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        crossing.append(f"{path.name}: from {'.' * node.level}"
                                        f"{node.module or ''} import {alias.name}")
    assert not crossing, crossing

"""Build checks: the CUDA kernel file compiles with a bare nvcc, without torch headers."""
import os
import re
import shutil
import subprocess

import pytest

CSRC = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "csrc"))
KERNELS = os.path.join(CSRC, "cuda", "noisy_step_kernels.cu")


def test_kernel_files_include_no_torch_headers():
    for name in ("cuda/noisy_step_kernels.cu", "cuda/noisy_step_kernels.cuh", "philox.h"):
        with open(os.path.join(CSRC, name)) as f:
            includes = re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', f.read(), re.M)
        assert includes, name
        assert not [i for i in includes if re.match(r"(torch|ATen|c10)/", i)], (name, includes)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles_kernels(arch, tmp_path):
    cmd = ["nvcc", "-std=c++17", "-O3", "-c", KERNELS, "-o", str(tmp_path / "k.o"),
           f"-gencode=arch=compute_{arch[3:]},code={arch}", "-Xptxas", "-Werror"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "k.o").stat().st_size > 0

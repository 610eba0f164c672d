"""Build script. Project metadata lives in pyproject.toml; this file only adds the torch extension.

The extension ``certunlearn_train._C`` holds the fused noisy-step op (``csrc/``). It has no
pybind11 bindings: importing it runs the ``TORCH_LIBRARY`` registrations.

Environment:
    CERTUNLEARN_CUDA=1  build the CUDA kernels too; fail if torch has no CUDA or nvcc is missing.
    CERTUNLEARN_CUDA=0  build the CPU kernels only.
    (unset)             build the CUDA kernels when torch was built with CUDA and nvcc is found.
    DEBUG=1             -O0 -g instead of -O3.
    TORCH_CUDA_ARCH_LIST, MAX_JOBS  as for any torch extension.

Install without build isolation (``pip install --no-build-isolation -e .``) so the extension is
compiled against the torch that will load it; a build against another torch fails at import with
undefined symbols.
"""
import glob
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover
    sys.exit(f"setup.py: torch must be installed before building certunlearn ({exc}); "
             f"use `pip install --no-build-isolation -e .` after installing torch")

HERE = os.path.dirname(os.path.abspath(__file__))
#: Runtime dependencies besides torch (torch is pinned below to the version the extension is built
#: against: a wheel built against one torch fails to load under another with undefined symbols).
REQUIREMENTS = ["mpmath>=1.3", "numpy>=1.24", "scipy>=1.10", "tqdm>=4.60", "scikit-learn>=1.2",
                "pyyaml>=6", "cryptography>=42"]


def _torch_requirement() -> str:
    """``torch==X.Y.Z`` for the torch this build compiles against (local labels like +cpu dropped)."""
    return "torch==" + torch.__version__.split("+")[0]


def _write_build_info() -> None:
    """Record the torch the extension is compiled against; ``certunlearn_train.ops`` checks it."""
    path = os.path.join(HERE, "certunlearn_train", "_build_info.py")
    text = ('"""Written by setup.py at build time: the torch the extension was compiled against."""\n'
            f"TORCH_VERSION = {torch.__version__!r}\n")
    old = open(path).read() if os.path.exists(path) else None
    if old != text:
        with open(path, "w") as fh:
            fh.write(text)


def _want_cuda() -> bool:
    request = os.environ.get("CERTUNLEARN_CUDA", "").strip()
    if request not in ("", "0", "1"):
        sys.exit(f"setup.py: CERTUNLEARN_CUDA must be 0, 1 or unset, got {request!r}")
    torch_cuda = torch.version.cuda is not None
    if request == "1":
        if not torch_cuda:
            sys.exit(f"setup.py: CERTUNLEARN_CUDA=1 but this torch ({torch.__version__}) was built "
                     f"without CUDA; install a CUDA build of torch or set CERTUNLEARN_CUDA=0")
        if CUDA_HOME is None:
            sys.exit("setup.py: CERTUNLEARN_CUDA=1 but no CUDA toolkit was found (nvcc); set "
                     "CUDA_HOME or put nvcc on PATH, or set CERTUNLEARN_CUDA=0")
        return True
    if request == "0":
        return False
    if torch_cuda and CUDA_HOME is None:
        print("setup.py: WARNING: torch has CUDA but no CUDA toolkit (nvcc) was found; building "
              "the CPU kernels only (set CERTUNLEARN_CUDA=1 to make this an error)",
              file=sys.stderr)
        return False
    return torch_cuda


def _extensions():
    debug = os.environ.get("DEBUG", "0") == "1"
    use_cuda = _want_cuda()
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # Portable flags only: the hot loops pick AVX2 at run time (target_clones), never -march=native.
    cxx = opt + ["-std=c++20", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Wall",
                 "-Wno-unknown-pragmas"]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    # -fopenmp at compile time only: the OpenMP calls then bind to the runtime torch already
    # loaded (through libtorch_cpu), never to a second libgomp from the build compiler.
    kwargs = dict(extra_compile_args={"cxx": cxx})
    if use_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        kwargs["extra_compile_args"]["cxx"] = cxx + ["-DCERTUNLEARN_WITH_CUDA"]
        kwargs["extra_compile_args"]["nvcc"] = opt + ["-std=c++20", "-lineinfo",
                                                      "-DCERTUNLEARN_WITH_CUDA"]
        ext = CUDAExtension("certunlearn_train._C", sources, **kwargs)
    else:
        ext = CppExtension("certunlearn_train._C", sources, **kwargs)
    print(f"setup.py: building certunlearn_train._C ({'CPU + CUDA' if use_cuda else 'CPU only'}, "
          f"{'debug' if debug else 'optimized'})", file=sys.stderr)
    return [ext]


_write_build_info()
setup(
    install_requires=REQUIREMENTS + [_torch_requirement()],
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension},
)

"""Builds the compiled extension ``fastflow._C``; the package metadata lives in pyproject.toml.

The C++ sources (csrc/*.cpp) are always built. The CUDA sources (csrc/cuda/*.cu) are added when torch was built
with CUDA and nvcc is found; environment switches:

* ``FASTFLOW_SKIP_CUDA_BUILD=1``: build the C++ part only.
* ``FASTFLOW_FORCE_CUDA=1``: build the CUDA part, and fail with the reason when it cannot be built instead of
  falling back to the C++ part.
* ``TORCH_CUDA_ARCH_LIST``: GPU architectures (default ``9.0``, H100/H200).

torch must be importable when this runs: ``pip install --no-build-isolation -e .``.
"""
import glob
import os

import setuptools
from setuptools import setup

if int(setuptools.__version__.split(".")[0]) < 77:
    # pyproject.toml's `license = "MIT"` (PEP 639) needs setuptools 77; a Python 3.11 venv ships 65.5
    raise SystemExit(
        f"fastflow needs setuptools >= 77 to build (found {setuptools.__version__}). Run "
        '`pip install "setuptools>=77"`, then `pip install --no-build-isolation -e .` again.'
    )

try:
    import torch
except ImportError as e:
    raise SystemExit(
        "fastflow's setup.py needs torch to compile the extension fastflow._C, and torch is not importable. "
        "Install torch first, then `pip install --no-build-isolation -e .` (without --no-build-isolation pip "
        "builds in a fresh environment, whose torch may not match the one fastflow will run with)."
    ) from e
from torch.utils import cpp_extension
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name: str) -> bool:
    """fastflow's one boolean rule (fastflow/_core/config.py, which setup.py cannot import before the build)."""
    raw = os.environ.get(name, "")
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("", "0", "false", "no", "off"):
        return False
    raise SystemExit(f"{name} must be a boolean (1/true/yes/on or 0/false/no/off, or empty), got {raw!r}")


def _sources(pattern: str) -> list[str]:
    # setuptools wants source paths relative to the project root.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _cuda_home() -> str | None:
    """torch's CUDA_HOME (CUDA_HOME / CUDA_PATH, else the nvcc on PATH), else /usr/local/cuda if it exists."""
    home = cpp_extension.CUDA_HOME or os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home is None and os.path.isdir("/usr/local/cuda"):
        home = "/usr/local/cuda"
    return home


def _cuda_build_problem() -> str | None:
    """Why the CUDA sources cannot be built here, or None when they can."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} was built without CUDA"
    home = _cuda_home()
    if home is None:
        return "no CUDA toolkit found (set CUDA_HOME)"
    if not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return f"nvcc not found in {home}/bin (set CUDA_HOME to the CUDA toolkit)"
    return None


def _build_cuda() -> bool:
    skip, force = _env_flag("FASTFLOW_SKIP_CUDA_BUILD"), _env_flag("FASTFLOW_FORCE_CUDA")
    if skip and force:
        raise SystemExit("FASTFLOW_SKIP_CUDA_BUILD=1 and FASTFLOW_FORCE_CUDA=1 contradict each other: unset one.")
    if skip:
        return False
    problem = _cuda_build_problem()
    if problem is not None and force:
        raise SystemExit(f"FASTFLOW_FORCE_CUDA=1, but the CUDA sources of fastflow._C cannot be built: {problem}.")
    if problem is not None:
        print(f"fastflow: building fastflow._C without CUDA ({problem}).")
    return problem is None


class FallbackBuildExtension(BuildExtension):
    """BuildExtension, but a CUDA build that fails (nvcc, or the link: a wrapper nvcc without libcudart, say)
    is retried as the CPU-only extension with a warning, unless FASTFLOW_FORCE_CUDA=1 asks for CUDA or failure."""

    def build_extension(self, ext):
        cuda = any(src.endswith(".cu") for src in ext.sources)
        try:
            return super().build_extension(ext)
        except Exception as e:  # a compiler or linker error surfaces as one of several distutils errors
            if not cuda or _env_flag("FASTFLOW_FORCE_CUDA"):
                raise
            print(f"\nWARNING: fastflow: the CUDA build of fastflow._C failed ({type(e).__name__}: {e}).\n"
                  "WARNING: building the CPU-only extension instead (the CUDA draws fall back to torch, the Triton "
                  "kernels still run on the GPU). FASTFLOW_FORCE_CUDA=1 makes this failure fatal; "
                  "FASTFLOW_SKIP_CUDA_BUILD=1 skips the CUDA attempt. A build without --no-build-isolation "
                  "compiles against another torch than the one installed: use pip install --no-build-isolation -e .",
                  flush=True)
            # the same extension without its .cu sources, the WITH_CUDA macro and the CUDA libraries (the compile
            # flags that build_extensions added for torch stay); force: every object is rebuilt without WITH_CUDA
            ext.sources = [src for src in ext.sources if not src.endswith(".cu")]
            ext.define_macros = [m for m in ext.define_macros if m[0] != "WITH_CUDA"]
            ext.libraries = [lib for lib in ext.libraries if "cuda" not in lib]
            self.force = True
            return super().build_extension(ext)


#: -fopenmp at compile and link time: at::parallel_for is a header template whose OpenMP pragma is compiled into
#: this module (without it, the loops run on one thread); the libgomp it links against is the one torch has
#: already loaded (same soname). -ffp-contract=off: no fused multiply-adds, so the SIMD clones of draw.cpp
#: (AVX-512, AVX2, baseline) and a scalar loop give bitwise the same numbers; -fno-math-errno lets sqrt vectorise
#: (errno is never read).
_CXX_ARGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]
_LINK_ARGS = ["-fopenmp"]


def get_extensions():
    """The one extension module ``fastflow._C``: csrc/*.cpp, plus csrc/cuda/*.cu when CUDA can be built."""
    sources = _sources("csrc/*.cpp")
    extra_compile_args = {"cxx": list(_CXX_ARGS)}
    extra_link_args = list(_LINK_ARGS)
    if not _build_cuda():
        return [CppExtension("fastflow._C", sources, extra_compile_args=extra_compile_args,
                             extra_link_args=extra_link_args)]
    # CUDAExtension and BuildExtension read torch's CUDA_HOME; fill it in when only the default path found one.
    cpp_extension.CUDA_HOME = _cuda_home()
    # Without an explicit list torch compiles for the visible GPU, or for every architecture when none is.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    # No --use_fast_math: its approximate exp/log and flush-to-zero would change the weights.
    extra_compile_args["nvcc"] = ["-O3"]
    return [CUDAExtension("fastflow._C", sources + _sources("csrc/cuda/*.cu"), define_macros=[("WITH_CUDA", None)],
                          extra_compile_args=extra_compile_args, extra_link_args=extra_link_args)]


setup(ext_modules=get_extensions(), cmdclass={"build_ext": FallbackBuildExtension})

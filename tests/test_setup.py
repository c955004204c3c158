"""setup.py's CUDA build choice and fallback (issue 11 §3.12: without --no-build-isolation a build failed after
7 minutes at the CUDA link, `cannot find -lcudart`). A failed CUDA build must fall back to the CPU-only extension
with a warning, unless FASTFLOW_FORCE_CUDA=1 makes it fatal; a CUDA request that cannot be met stops at once.

setup.py is loaded with ``setuptools.setup`` replaced by a no-op, and the parent ``build_extension`` by a recorder
that fails on .cu sources: the test needs neither a compiler nor CUDA.
"""
import os
import types

import pytest
import setuptools
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def setup_module(monkeypatch):
    monkeypatch.setattr(setuptools, "setup", lambda **kw: None)
    monkeypatch.delenv("FASTFLOW_FORCE_CUDA", raising=False)
    monkeypatch.setenv("FASTFLOW_SKIP_CUDA_BUILD", "1")  # loading the module computes the extension list
    mod = types.ModuleType("fastflow_setup")
    mod.__file__ = os.path.join(ROOT, "setup.py")
    with open(mod.__file__) as f:
        exec(compile(f.read(), mod.__file__, "exec"), mod.__dict__)
    monkeypatch.delenv("FASTFLOW_SKIP_CUDA_BUILD")
    return mod


def _cuda_ext():
    return types.SimpleNamespace(sources=["csrc/draw.cpp", "csrc/cuda/draw.cu"],
                                 define_macros=[("WITH_CUDA", None), ("KEEP", "1")],
                                 libraries=["c10", "cudart", "c10_cuda"])


def _builder(mod, monkeypatch, fail_on_cuda=True):
    calls = []

    def parent(self, ext):
        calls.append((list(ext.sources), list(ext.define_macros), list(ext.libraries)))
        if fail_on_cuda and any(s.endswith(".cu") for s in ext.sources):
            raise RuntimeError("/usr/bin/ld: cannot find -lcudart")

    monkeypatch.setattr(cpp_extension.BuildExtension, "build_extension", parent)
    return mod.FallbackBuildExtension.__new__(mod.FallbackBuildExtension), calls


def test_a_failed_cuda_build_falls_back_to_the_cpu_extension(setup_module, monkeypatch, capsys):
    builder, calls = _builder(setup_module, monkeypatch)
    builder.build_extension(_cuda_ext())
    assert len(calls) == 2
    sources, macros, libs = calls[1]
    assert sources == ["csrc/draw.cpp"] and macros == [("KEEP", "1")] and libs == ["c10"]
    assert builder.force is True  # every object is rebuilt without WITH_CUDA
    out = capsys.readouterr().out
    assert "WARNING: fastflow: the CUDA build of fastflow._C failed" in out and "cannot find -lcudart" in out
    assert "FASTFLOW_FORCE_CUDA=1" in out and "--no-build-isolation" in out


def test_force_cuda_keeps_the_failure_fatal(setup_module, monkeypatch):
    builder, calls = _builder(setup_module, monkeypatch)
    monkeypatch.setenv("FASTFLOW_FORCE_CUDA", "1")
    with pytest.raises(RuntimeError, match="cannot find -lcudart"):
        builder.build_extension(_cuda_ext())
    assert len(calls) == 1


def test_a_cpu_build_failure_is_not_retried(setup_module, monkeypatch):
    builder, calls = _builder(setup_module, monkeypatch, fail_on_cuda=False)

    def parent(self, ext):
        calls.append(ext.sources)
        raise RuntimeError("error: expected ';'")

    monkeypatch.setattr(cpp_extension.BuildExtension, "build_extension", parent)
    with pytest.raises(RuntimeError, match="expected"):
        builder.build_extension(types.SimpleNamespace(sources=["csrc/draw.cpp"], define_macros=[], libraries=[]))
    assert len(calls) == 1


def test_the_cuda_choice_stops_at_once_when_it_cannot_be_met(setup_module, monkeypatch, capsys):
    monkeypatch.setattr(setup_module, "_cuda_build_problem", lambda: "torch 2.13.0 was built without CUDA")
    assert setup_module._build_cuda() is False
    assert "building fastflow._C without CUDA (torch 2.13.0 was built without CUDA)" in capsys.readouterr().out
    monkeypatch.setenv("FASTFLOW_FORCE_CUDA", "1")
    with pytest.raises(SystemExit, match="FASTFLOW_FORCE_CUDA=1, but the CUDA sources .* cannot be built"):
        setup_module._build_cuda()
    monkeypatch.setenv("FASTFLOW_SKIP_CUDA_BUILD", "1")
    with pytest.raises(SystemExit, match="contradict"):
        setup_module._build_cuda()
    monkeypatch.setenv("FASTFLOW_FORCE_CUDA", "maybe")
    with pytest.raises(SystemExit, match="FASTFLOW_FORCE_CUDA must be a boolean"):
        setup_module._build_cuda()
    monkeypatch.delenv("FASTFLOW_FORCE_CUDA")
    assert setup_module._build_cuda() is False  # skipped: no CUDA attempt
    monkeypatch.delenv("FASTFLOW_SKIP_CUDA_BUILD")
    monkeypatch.setattr(setup_module, "_cuda_build_problem", lambda: None)
    assert setup_module._build_cuda() is True

"""`import fastflow` never fails for lack of Triton or the compiled extension, and says what is missing."""
import os
import subprocess
import sys
import textwrap


def _run(code: str, **env):
    e = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=e,
                          timeout=120)


def test_import_without_triton_and_without_C():
    r = _run("""
        import sys
        sys.modules["triton"] = None          # any `import triton` now raises ImportError
        import torch, fastflow
        info = fastflow.backends()
        assert info["triton"] is False and info["C"] is False, info
        assert info["field_backends"] == ["reference", "torch"], info
        x, ref = torch.randn(3, 5), torch.randn(7, 5)
        out = fastflow.Poisson().posterior_mean(x, 0.5, ref)
        assert out.shape == (3, 5) and torch.isfinite(out).all()
        try:
            fastflow.Poisson().posterior_mean(x, 0.5, ref, backend="triton")
        except RuntimeError as e:
            assert "pip install triton" in str(e), e
        else:
            raise AssertionError("backend='triton' without Triton must raise")
        print("ok")
    """, FASTFLOW_DISABLE_C="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")

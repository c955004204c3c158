"""NVTX ranges (fastflow/_nvtx.py): named ranges of the fastflow domain around the public ops, none without the
nvtx package, none under torch.compile."""
import contextlib

import torch

import fastflow


def test_nvtx_ranges(monkeypatch):
    """With nvtx available, the public ops run inside named ranges of the fastflow domain; without it (module
    None) they run unwrapped; under torch.compile the ranges are skipped (fullgraph stays possible)."""
    from fastflow._core import nvtx as _nvtx

    seen = []

    class Recorder:
        @staticmethod
        @contextlib.contextmanager
        def annotate(message, domain):
            seen.append((message, domain))
            yield

    monkeypatch.setattr(_nvtx, "module", Recorder)
    x, ref = torch.randn(4, 3), torch.randn(6, 3)
    fastflow.pfgm.target(x, 1.0, ref)
    fastflow.Gaussian().velocity(x, 0.5, ref)
    fastflow.odeint(lambda y, t: -y, x, 0.0, 1.0)
    names = [m for m, _ in seen]
    assert {"fastflow.pfgm.target", "fastflow.field", "fastflow.family.velocity", "fastflow.odeint"} <= set(names)
    assert {d for _, d in seen} == {"fastflow"}
    assert names.index("fastflow.pfgm.target") < names.index("fastflow.field")  # nested: outer first
    seen.clear()
    monkeypatch.setattr(_nvtx, "module", None)
    fastflow.pfgm.target(x, 1.0, ref)
    assert seen == []
    monkeypatch.setattr(_nvtx, "module", Recorder)
    # the wrapper itself keeps a graph whole (the public ops' own fullgraph support is a separate matter)
    doubled = _nvtx.annotate("fastflow.test")(lambda a: a * 2)
    assert torch.equal(torch.compile(doubled, fullgraph=True, backend="eager")(x), 2 * x)
    assert "fastflow.test" not in [m for m, _ in seen]
    doubled(x)
    assert "fastflow.test" in [m for m, _ in seen]

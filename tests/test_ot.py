"""fastflow.ot (issue 14 §1): log-domain Sinkhorn against a dense float64 reference (potentials, plan, marginals),
the exact coupling against brute force and scipy, class labels, and bad input."""
import itertools

import pytest
import torch
from scipy.optimize import linear_sum_assignment

import fastflow.ot as OT

F64 = torch.float64


def clouds(B=40, R=30, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, d, generator=g, dtype=F64), torch.randn(R, d, generator=g, dtype=F64) * 0.7 + 0.5


def dense_sinkhorn(x0, x1, eps, a, b, iters=20000):
    C = ((x0[:, None, :] - x1[None, :, :]) ** 2).sum(-1)
    f, g = torch.zeros(len(x0), dtype=F64), torch.zeros(len(x1), dtype=F64)
    for _ in range(iters):
        f = -eps * torch.logsumexp((g[None] - C) / eps + torch.log(b)[None], 1)
        g = -eps * torch.logsumexp((f[:, None] - C) / eps + torch.log(a)[:, None], 0)
    return torch.exp((f[:, None] + g[None] - C) / eps) * a[:, None] * b[None]


@pytest.mark.parametrize("chunk", [None, 7])
@pytest.mark.parametrize("scaling", [True, False])
def test_sinkhorn_matches_a_dense_reference(chunk, scaling):
    x0, x1 = clouds()
    g = torch.Generator().manual_seed(1)
    a = torch.rand(40, generator=g, dtype=F64) + 0.5
    b = torch.rand(30, generator=g, dtype=F64) + 0.5
    a, b = a / a.sum(), b / b.sum()
    eps = 2.0
    res = OT.sinkhorn(x0, x1, eps=eps, a=a, b=b, tol=1e-12, max_iters=20000, chunk_size=chunk, eps_scaling=scaling)
    assert res.converged and res.marginal_error <= 1e-12
    P = res.plan(x0, x1)
    torch.testing.assert_close(P, dense_sinkhorn(x0, x1, eps, a, b), rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(P.sum(1), a, rtol=0, atol=1e-14)
    assert float((P.sum(0) - b).abs().sum()) == pytest.approx(res.marginal_error, abs=1e-14)
    # float32 points: the potentials are float64, the plan agrees to the GEMM's rounding
    r32 = OT.sinkhorn(x0.float(), x1.float(), eps=eps, a=a, b=b, tol=1e-10, max_iters=20000)
    assert float((r32.plan(x0, x1) - P).abs().sum()) < 1e-4


def test_sinkhorn_reports_non_convergence():
    x0, x1 = clouds()
    res = OT.sinkhorn(x0, x1, eps=0.05, max_iters=5, tol=1e-12)
    assert not res.converged and res.iterations == 5 and res.marginal_error > 1e-12


def test_exact_coupling_is_the_optimal_permutation():
    for seed in range(3):
        x0, x1 = clouds(6, 6, 3, seed)
        C = ((x0[:, None] - x1[None]) ** 2).sum(-1)
        best = min(sum(float(C[i, p[i]]) for i in range(6)) for p in itertools.permutations(range(6)))
        perm = OT.couple(x0, x1)
        assert sorted(perm.tolist()) == list(range(6))
        assert float(C[torch.arange(6), perm].sum()) == pytest.approx(best, rel=1e-12)
    x0, x1 = clouds(256, 256, 16, 5)
    C = ((x0[:, None] - x1[None]) ** 2).sum(-1).numpy()
    r, c = linear_sum_assignment(C)
    perm = OT.couple(x0.float(), x1.float())
    assert float(C[torch.arange(256).numpy(), perm.numpy()].sum()) == pytest.approx(float(C[r, c].sum()), rel=1e-6)


def test_labels_pair_within_classes_and_sinkhorn_draws():
    x0, x1 = clouds(60, 60, 4, 2)
    l0 = torch.arange(60) % 3
    l1 = torch.arange(60).flip(0) % 3
    for method in ("exact", "sinkhorn"):
        j = OT.couple(x0, x1, method=method, labels0=l0, labels1=l1, generator=torch.Generator().manual_seed(0))
        assert bool((l1[j] == l0).all()), method
    # the draws follow the plan's rows: empirical frequencies against P_i. / a_i
    x0, x1 = clouds(3, 5, 2, 4)
    eps = 3.0
    P = OT.sinkhorn(x0, x1, eps=eps, tol=1e-12, max_iters=5000).plan(x0, x1)
    counts = torch.zeros(3, 5, dtype=F64)
    g = torch.Generator().manual_seed(7)
    for _ in range(2000):
        j = OT.couple(x0, x1, method="sinkhorn", eps=eps, generator=g, tol=1e-12, max_iters=5000)
        counts[torch.arange(3), j] += 1
    torch.testing.assert_close(counts / 2000, P * 3, rtol=0, atol=0.05)


def test_bad_input():
    x0, x1 = clouds()
    with pytest.raises(ValueError, match="eps must be"):
        OT.sinkhorn(x0, x1, eps=0.0)
    with pytest.raises(ValueError, match="same point shape"):
        OT.sinkhorn(x0, x1[:, :3], eps=1.0)
    with pytest.raises(ValueError, match="as many points"):
        OT.couple(x0, x1)
    with pytest.raises(ValueError, match=r"labels0 must be an integer tensor of shape \(40,\)"):
        OT.couple(x0, x1, method="sinkhorn", labels0=torch.zeros(3, dtype=torch.long), labels1=torch.zeros(30,
                  dtype=torch.long))
    with pytest.raises(ValueError, match="sum to 1"):
        OT.sinkhorn(x0, x1, eps=1.0, a=torch.ones(40, dtype=F64))
    with pytest.raises(ValueError, match="method"):
        OT.couple(x0, x1[:40], method="greedy")

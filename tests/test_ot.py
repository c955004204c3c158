"""fastflow.ot (issue 14 §1): log-domain Sinkhorn against a dense float64 reference (potentials, plan, marginals),
the exact coupling against brute force and scipy, class labels, and bad input."""
import itertools
import warnings

import pytest
import torch
from scipy.optimize import linear_sum_assignment

import fastflow
import fastflow._core.loader
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
    # the reported error is the plan's, rows and columns (rows are exact but for the over-relaxation's last step)
    err = float((P.sum(1) - a).abs().sum() + (P.sum(0) - b).abs().sum())
    assert err == pytest.approx(res.marginal_error, abs=1e-14)
    exact_rows = OT.sinkhorn(x0, x1, eps=eps, a=a, b=b, tol=1e-12, max_iters=20000, chunk_size=chunk,
                             eps_scaling=scaling, overrelax=False)
    torch.testing.assert_close(exact_rows.plan(x0, x1).sum(1), a, rtol=0, atol=1e-15)
    # float32 points: the potentials are float64, the plan agrees to the GEMM's rounding
    r32 = OT.sinkhorn(x0.float(), x1.float(), eps=eps, a=a, b=b, tol=1e-10, max_iters=20000)
    assert float((r32.plan(x0, x1) - P).abs().sum()) < 1e-4


def test_sinkhorn_reports_non_convergence():
    x0, x1 = clouds()
    res = OT.sinkhorn(x0, x1, eps=0.05, max_iters=5, tol=1e-12)
    assert not res.converged and res.iters == 5 and res.iterations == 5 and res.marginal_error > 1e-12


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


def test_seams_grad_empty_strides_and_images():
    x0, x1 = clouds(B=30, R=30, d=6)
    ref = OT.sinkhorn(x0, x1, eps=0.5)
    perm = OT.couple(x0, x1)
    # points that require grad: the same result, no graph, no warning about a scalar read of a grad tensor
    g0 = x0.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = OT.sinkhorn(g0, x1, eps=0.5)
        assert torch.equal(OT.couple(g0, x1), perm)
    assert not got.f.requires_grad and torch.allclose(got.f, ref.f, rtol=0, atol=1e-12)
    # column-major and strided views: the same potentials (the GEMM may reassociate: 1e-10)
    wide = torch.zeros(30, 12, dtype=F64)
    wide[:, ::2] = x0
    for view in (x0.t().contiguous().t(), wide[:, ::2]):
        assert torch.allclose(OT.sinkhorn(view, x1, eps=0.5).f, ref.f, rtol=0, atol=1e-10)
        assert torch.equal(OT.couple(view, x1), perm)
    # image-shaped points are flattened
    assert torch.equal(OT.couple(x0.reshape(30, 2, 3), x1.reshape(30, 2, 3)), perm)
    # B = 0: an empty coupling; sinkhorn has no probability vector on an empty side
    for method in ("exact", "sinkhorn"):
        out = OT.couple(x0[:0], x1[:0] if method == "exact" else x1, method=method, eps=0.5)
        assert out.shape == (0,) and out.dtype == torch.long
    with pytest.raises(ValueError, match="points on both sides"):
        OT.sinkhorn(x0[:0], x1, eps=0.5)
    with pytest.raises(ValueError, match="at least one point in x1"):
        OT.couple(x0, x1[:0], method="sinkhorn", eps=0.5)


# ---- the fused log-sum-exp (fastflow::sinkhorn_lse, csrc/sinkhorn.cpp) against its torch specification


needs_ext = pytest.mark.skipif(not fastflow._core.loader.has_C(), reason="fastflow._C is not built")


@needs_ext
@pytest.mark.parametrize("B,R", [(1, 1), (3, 5), (17, 9), (40, 257), (300, 530)])
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("scale", [1e-3, 0.3, 50.0])
def test_sinkhorn_lse_op_matches_torch(B, R, dim, scale):
    g = torch.Generator().manual_seed(B * 1000 + R)
    C = torch.rand(B, R, generator=g, dtype=F64) * 40.0
    h = torch.randn(R if dim == 1 else B, generator=g, dtype=F64) * 20.0
    out = torch.ops.fastflow.sinkhorn_lse(C, h, scale, dim)
    ref = OT.sinkhorn_lse_reference(C, h, scale, dim)
    torch.testing.assert_close(out, ref, rtol=1e-15, atol=1e-13)


@needs_ext
def test_sinkhorn_lse_exp_is_accurate_over_its_whole_range():
    """Rows (0, -c): LSE = log1p(exp(-c)) over c in [0, 700] to an ulp of 1 (the max's term, 1, bounds what a
    term can add); rows of one 0 and 1023 terms at -c, c in [0, 7] (where they add up to 1023 ... 1) to 1e-15
    relative: the exp's error on the terms that count."""
    c = torch.linspace(0.0, 700.0, 200_001, dtype=F64)
    C = torch.stack([torch.zeros_like(c), c], 1).contiguous()
    out = torch.ops.fastflow.sinkhorn_lse(C, torch.zeros(2, dtype=F64), 1.0, 1)
    assert float((out - torch.log1p(torch.exp(-c))).abs().max()) <= 2.3e-16
    c = torch.linspace(0.0, 7.0, 2001, dtype=F64)
    C = torch.cat([torch.zeros(len(c), 1, dtype=F64), c[:, None].expand(-1, 1023)], 1).contiguous()
    for dim, Cd in ((1, C), (0, C.t().contiguous())):
        out = torch.ops.fastflow.sinkhorn_lse(Cd, torch.zeros(Cd.shape[1 if dim == 1 else 0], dtype=F64), 1.0, dim)
        ref = torch.log1p(1023.0 * torch.exp(-c))
        assert float(((out - ref).abs() / ref).max()) < 1e-15
    # a term 800 below the max is 0 next to it (the exp's floor), exactly as in torch
    C2 = torch.tensor([[0.0, 800.0]], dtype=F64)
    assert float(torch.ops.fastflow.sinkhorn_lse(C2, torch.zeros(2, dtype=F64), 1.0, 1)) == 0.0


@needs_ext
def test_sinkhorn_lse_does_not_depend_on_threads():
    g = torch.Generator().manual_seed(3)
    C = torch.rand(333, 700, generator=g, dtype=F64) * 100
    outs = []
    n = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append([torch.ops.fastflow.sinkhorn_lse(C, torch.randn(700 if dim else 333, generator=torch.Generator()
                                                         .manual_seed(dim), dtype=F64), 0.7, dim) for dim in (0, 1)])
    finally:
        torch.set_num_threads(n)
    for u, v in zip(*outs):
        assert torch.equal(u, v)


@needs_ext
def test_sinkhorn_lse_opcheck_and_bad_input():
    C = torch.rand(6, 4, dtype=F64)
    torch.library.opcheck(torch.ops.fastflow.sinkhorn_lse.default, (C, torch.zeros(4, dtype=F64), 0.5, 1))
    torch.library.opcheck(torch.ops.fastflow.sinkhorn_lse.default, (C, torch.zeros(6, dtype=F64), 0.5, 0))
    with pytest.raises(RuntimeError, match="dim must be"):
        torch.ops.fastflow.sinkhorn_lse(C, torch.zeros(4, dtype=F64), 0.5, 2)
    with pytest.raises(RuntimeError, match="float64"):
        torch.ops.fastflow.sinkhorn_lse(C.float(), torch.zeros(4, dtype=F64), 0.5, 1)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.fastflow.sinkhorn_lse(C.t(), torch.zeros(6, dtype=F64), 0.5, 1)
    with pytest.raises(RuntimeError, match=r"h must be a contiguous \(6,\)"):
        torch.ops.fastflow.sinkhorn_lse(C, torch.zeros(4, dtype=F64), 0.5, 0)


# ---- over-relaxation


def test_relaxation_takes_the_sor_optimum_and_falls_back():
    r = 0.9
    rx = OT._Relaxation(True)
    errs = [r**k for k in range(6)]
    for e in errs:
        w = rx.update(e)
    assert w == pytest.approx(2.0 / (1.0 + (1.0 - r) ** 0.5), rel=1e-12)
    # at omega the SOR rate rho = omega - 1 implies back the same plain rate: omega is kept
    rho = w - 1.0
    for k in range(1, 8):
        assert rx.update(errs[-1] * rho**k) == w
    # an error 4x over the smallest: back to plain iterations, the cap halfway
    assert rx.update(1.0) == 1.0 and rx.cap == pytest.approx(1.0 + (w - 1.0) / 2)
    assert OT._Relaxation(False).update(0.5) == 1.0


def test_overrelaxation_reaches_the_same_plan_in_fewer_iterations():
    x0, x1 = clouds(60, 60, 4, seed=5)
    eps = 0.02 * float(OT._cost(x0, x1).mean())
    plain = OT.sinkhorn(x0, x1, eps=eps, tol=1e-10, max_iters=50000, overrelax=False)
    fast = OT.sinkhorn(x0, x1, eps=eps, tol=1e-10, max_iters=50000)
    assert plain.converged and fast.converged
    assert fast.iters < plain.iters / 2
    P, Q = plain.plan(x0, x1), fast.plan(x0, x1)
    assert float((P - Q).abs().sum()) < 1e-8
    # the reported error is the plan's: rows and columns
    err = float((Q.sum(1) - fast.a).abs().sum() + (Q.sum(0) - fast.b).abs().sum())
    assert err == pytest.approx(fast.marginal_error, rel=1e-6, abs=1e-15)

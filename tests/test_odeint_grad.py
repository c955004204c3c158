"""Backpropagation through odeint (issue 13 §4): odeint(grad=True) against the exact derivative of a linear ODE
(exp(A T), per-sample end times so that rows leave the batch), the discrete Euler map, and gradcheck."""
import pytest
import torch

import fastflow

F64 = torch.float64
A = torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=F64)
T = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=F64)


def linear(x, t):
    return x @ A.t()


@pytest.mark.parametrize("method,kw,tol", [
    ("dopri5", dict(rtol=1e-10, atol=1e-12), 1e-9),
    ("rk4", dict(steps=200), 1e-9),
])
def test_gradient_of_a_linear_flow_is_its_matrix_exponential(method, kw, tol):
    x0 = torch.randn(4, 2, dtype=F64, requires_grad=True)
    res = fastflow.odeint(linear, x0, 0.0, T, method=method, grad=True, **kw)
    G = torch.randn(4, 2, dtype=F64)
    (g,) = torch.autograd.grad((res.x * G).sum(), x0)
    want = torch.stack([G[i] @ torch.linalg.matrix_exp(A * T[i]) for i in range(4)])
    torch.testing.assert_close(g, want, rtol=tol, atol=tol)


def test_euler_gradient_is_the_discrete_map():
    x0 = torch.randn(3, 2, dtype=F64, requires_grad=True)
    n, t1 = 7, 1.3
    res = fastflow.odeint(linear, x0, 0.0, t1, method="euler", steps=n, grad=True)
    (g,) = torch.autograd.grad(res.x.sum(), x0)
    M = torch.linalg.matrix_power(torch.eye(2, dtype=F64) + (t1 / n) * A, n)  # x_N = M x0 (row vectors: x M^T)
    torch.testing.assert_close(g, torch.ones(3, 2, dtype=F64) @ M, rtol=1e-12, atol=1e-12)


def test_gradcheck_through_parameters_and_model_kwargs():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, generator=g, dtype=F64, requires_grad=True)
    W = torch.randn(2, 2, generator=g, dtype=F64, requires_grad=True)
    s = torch.rand(3, generator=g, dtype=F64).add_(0.5).requires_grad_(True)

    def f(y, t, scale):
        return torch.tanh(y @ W.t()) * scale[:, None]

    for method, kw in (("rk4", dict(steps=6)), ("heun", dict(steps=9)), ("dopri5", dict(rtol=1e-12, atol=1e-12))):
        def run(x, W_, s_, method=method, kw=kw):
            return fastflow.odeint(lambda y, t, scale: torch.tanh(y @ W_.t()) * scale[:, None], x, 0.0, T[:3],
                                   method=method, grad=True, model_kwargs={"scale": s_}, **kw).x
        # dopri5: the accepted steps are constants of the backward, finite differences see them move slightly
        tol = dict(atol=1e-6, rtol=1e-5) if method == "dopri5" else {}
        assert torch.autograd.gradcheck(run, (x0, W, s), **tol), method
    res = fastflow.odeint(f, x0, 0.0, 1.0, method="rk4", steps=4, grad=True, model_kwargs={"scale": s})
    assert res.x.requires_grad


def test_no_graph_without_grad_and_float32():
    x0 = torch.randn(4, 2, requires_grad=True)
    res = fastflow.odeint(lambda x, t: x @ A.float().t(), x0, 0.0, T)
    assert not res.x.requires_grad
    res = fastflow.odeint(lambda x, t: x @ A.float().t(), x0, 0.0, T, grad=True)
    (g,) = torch.autograd.grad(res.x.sum(), x0)
    want = torch.stack([torch.ones(2, dtype=F64) @ torch.linalg.matrix_exp(A * T[i]) for i in range(4)])
    torch.testing.assert_close(g.double(), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(TypeError, match="grad"):
        fastflow.odeint(linear, x0.double(), 0.0, 1.0, grad=1)

"""Fake (meta) implementations of the compiled ``torch.ops.fastflow`` operators.

FakeTensor tracing (``torch.compile``, ``torch.library.opcheck``) calls these instead of the C++/CUDA kernels
to learn the output's shape, dtype and device. They are registered only when ``fastflow._C`` loaded (which
defines the ops' schemas); without it importing this module does nothing. The C++ side names this module with
``m.set_python_module("fastflow._core.ops")``, which torch checks on the first fake call.
"""
from __future__ import annotations

import torch

from . import loader

if loader.has_C():  # importing _C here is what registers the ops this module refers to

    @torch.library.register_fake("fastflow::field_step_")
    def _field_step_fake(dots, xn, yn, t, a, mmin, jmin, l, l2, offset, kind, p, q):
        """dots (B, C), mmin, jmin, l, l2 (B,) are updated in place; the new output is alpha (B,), like mmin."""
        return torch.empty_like(mmin)

    @torch.library.register_fake("fastflow::draw_")
    def _draw_fake(out, x0, a, scale, seed, offset, radius_kind, radius_param):
        """out (n, d) is filled in place; nothing is returned."""
        return None

    @torch.library.register_fake("fastflow::rk_combine_")
    def _rk_combine_fake(out, y, K, h, coeffs):
        """out (B, d) is filled in place; nothing is returned."""
        return None

    @torch.library.register_fake("fastflow::rk_error_norm_")
    def _rk_error_norm_fake(out, y, y_new, K, h, e_coeffs, rtol, atol):
        """out (B,) is filled in place; nothing is returned."""
        return None

    @torch.library.register_fake("fastflow::rk_control_")
    def _rk_control_fake(t, h, h_try, t_next, err_prev, status, t1, err, xmax, gains):
        """t, h, h_try, t_next, err_prev (n,) and status (n, 6) are updated in place; nothing is returned."""
        return None

    @torch.library.register_fake("fastflow::sinkhorn_lse")
    def _sinkhorn_lse_fake(C, h, scale, dim):
        """C (B, R) float64; the new output is (B,) for dim 1, (R,) for dim 0."""
        return C.new_empty((C.shape[0] if dim == 1 else C.shape[1],))

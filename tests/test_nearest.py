"""fastflow.nearest: streaming top-k nearest neighbours against torch.cdist + topk, exact distances, ties, errors,
and Oracle.nearest on top of it."""
import pytest
import torch

import fastflow


def _dense(x, ref, k):
    D = torch.cdist(x.reshape(len(x), -1).double(), ref.reshape(len(ref), -1).double())
    return D.topk(k, dim=1, largest=False)


def _direct(x, ref, idx):
    x2, r2 = x.reshape(len(x), -1).double(), ref.reshape(len(ref), -1).double()
    return (x2[:, None, :] - r2[idx]).norm(dim=2)


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 300, None])
def test_matches_cdist_float64(k, chunk_size):
    g = torch.Generator().manual_seed(k)
    ref = torch.randn(300, 3, 4, dtype=torch.float64, generator=g) + 5.0  # off the origin: the centring matters
    x = torch.randn(12, 40, 3, dtype=torch.float64, generator=g).permute(1, 2, 0)[:, :, :4] + 5.0
    assert not x.is_contiguous() and x.shape == (40, 3, 4)
    d, j = fastflow.nearest(x, ref, k, chunk_size=chunk_size)
    v, i = _dense(x, ref, k)
    assert d.dtype == torch.float64 and j.dtype == torch.int64 and d.shape == j.shape == (40, k)
    assert torch.equal(j, i)
    assert (d - v).abs().max() < 1e-12
    assert torch.equal(d, _direct(x, ref, j))  # exactly the direct difference, no GEMM in it
    assert bool((d[:, 1:] >= d[:, :-1]).all())


def test_float32_indices_and_exact_distances():
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(2000, 64, generator=g) * 2 - 1
    x = ref[:100] + 0.3 * torch.randn(100, 64, generator=g)
    d, j = fastflow.nearest(x, ref, 5, chunk_size=333)
    v, i = _dense(x, ref, 6)
    gaps = (v[:, 1:] - v[:, :-1]).min(dim=1).values
    ok = gaps > 1e-5 * v[:, -1]  # rows whose 6 nearest are not near-ties
    assert ok.sum() > 90
    assert torch.equal(j[ok], i[ok, :5])
    # the distances are the float64 direct differences of the float32 inputs, whatever the GEMM's rounding
    assert torch.equal(d, _direct(x, ref, j))
    assert (d - v[:, :5]).abs().max() < 1e-12


def test_small_distances_carry_no_cancellation():
    """A near-copy at distance 1e-6 of points of norm ~1e3: the GEMM form loses it in float32, the result does
    not."""
    g = torch.Generator().manual_seed(2)
    ref = torch.randn(500, 32, generator=g) * 1e3
    x = ref[:8] + 1e-6 * torch.randn(8, 32, generator=g)
    d, j = fastflow.nearest(x, ref)
    assert torch.equal(j[:, 0], torch.arange(8))
    want = (x.double() - ref[:8].double()).norm(dim=1)
    assert torch.equal(d[:, 0], want)


def test_ties_go_to_the_lower_index():
    base = torch.randn(10, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ref = torch.cat([base, base, base])  # every point three times: indices j, j + 10, j + 20
    x = base[[4, 7]] + 1e-3
    for C in (1, 4, 10, 30):
        d, j = fastflow.nearest(x, ref, 3, chunk_size=C)
        assert j.tolist() == [[4, 14, 24], [7, 17, 27]], C
        assert torch.equal(d[:, 0], d[:, 2])
        d, j = fastflow.nearest(x, ref, 2, chunk_size=C)
        assert j.tolist() == [[4, 14], [7, 17]], C
    # many exact ties in the GEMM: a constant reference set
    ref = torch.zeros(50, 3)
    d, j = fastflow.nearest(torch.ones(2, 3), ref, 4, chunk_size=7)
    assert j.tolist() == [[0, 1, 2, 3]] * 2


def test_k_equals_R_and_empty_batch():
    ref = torch.randn(9, 4)
    x = torch.randn(3, 4)
    d, j = fastflow.nearest(x, ref, 9, chunk_size=2)
    v, i = _dense(x, ref, 9)
    assert torch.equal(j, i) and (d - v).abs().max() < 1e-5
    d, j = fastflow.nearest(torch.zeros(0, 4), ref, 2)
    assert d.shape == j.shape == (0, 2) and d.dtype == torch.float64 and j.dtype == torch.int64


def test_half_precision_and_grad():
    g = torch.Generator().manual_seed(4)
    ref = torch.randn(100, 8, generator=g)
    x = torch.randn(5, 8, generator=g)
    d16, j16 = fastflow.nearest(x.bfloat16(), ref.bfloat16(), 2)
    assert torch.equal(d16, _direct(x.bfloat16(), ref.bfloat16(), j16))
    xr = x.clone().requires_grad_()
    d, j = fastflow.nearest(xr, ref, 1)
    d.sum().backward()
    want = (x.double() - ref[j[:, 0]].double()) / d
    assert torch.allclose(xr.grad.double(), want, atol=1e-6)


def test_errors():
    ref = torch.randn(5, 3)
    with pytest.raises(ValueError, match="k must be <= R"):
        fastflow.nearest(torch.randn(2, 3), ref, 6)
    with pytest.raises(ValueError, match="k must be >= 1"):
        fastflow.nearest(torch.randn(2, 3), ref, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        fastflow.nearest(torch.randn(2, 3), ref, 1.5)
    with pytest.raises(ValueError, match="per-point shape"):
        fastflow.nearest(torch.randn(2, 4), ref)
    with pytest.raises(ValueError, match="same dtype"):
        fastflow.nearest(torch.randn(2, 3, dtype=torch.float64), ref)
    with pytest.raises(TypeError, match="floating-point"):
        fastflow.nearest(torch.ones(2, 3, dtype=torch.int64), ref)
    with pytest.raises(TypeError, match="torch.Tensor"):
        fastflow.nearest([[0.0, 0.0, 0.0]], ref)
    with pytest.raises(ValueError, match="ref is empty"):
        fastflow.nearest(torch.randn(2, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        fastflow.nearest(torch.randn(2, 3), ref, chunk_size=0)
    with pytest.raises(ValueError, match="NaN"):
        fastflow.nearest(torch.full((2, 3), float("nan")), ref)
    with fastflow.set_validate_args(False):  # a meta tensor has no values to check, only a device
        with pytest.raises(ValueError, match="same device"):
            fastflow.nearest(torch.randn(2, 3, device="meta"), ref)


def test_oracle_nearest_uses_it():
    g = torch.Generator().manual_seed(5)
    ref = torch.randn(200, 2, 3, generator=g)
    x = torch.randn(30, 2, 3, generator=g)
    j, dist = fastflow.Oracle(fastflow.Gaussian(), ref).nearest(x)
    v, i = _dense(x, ref, 1)
    assert j.shape == dist.shape == (30,) and j.dtype == torch.int64 and dist.dtype == torch.float64
    assert torch.equal(j, i[:, 0]) and (dist - v[:, 0]).abs().max() < 1e-12

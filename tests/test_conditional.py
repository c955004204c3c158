"""Per-sample model inputs (model_kwargs), exact conditional fields and classifier-free guidance (issue 13 §1).

Before: a label-conditioned model that closed over its labels crashed flow_sample and pfgm.sample under dopri5
("size of tensor a (59) must match (64)") as soon as samples finished and left the batch."""
import math

import pytest
import torch

import fastflow

F64 = torch.float64


def classes(R=12, d=3, k=3, seed=0):
    """R reference points in k well-separated classes (class c around 3 c e_1), labels (R,)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(R) % k
    ref = torch.randn(R, d, generator=g, dtype=F64) * 0.3
    ref[:, 0] += 3.0 * labels.to(F64)
    return ref, labels


def own_class(ref, ref_labels, x, y):
    j = torch.cdist(x.reshape(len(x), -1), ref.reshape(len(ref), -1)).argmin(dim=1)
    return ref_labels[j] == y


def test_odeint_slices_model_kwargs_to_the_rows_still_integrating():
    # rows finish at different times (t1 per sample): the kwargs must follow them, and agree with the index
    B = 9
    x0 = torch.randn(B, 2, dtype=F64)
    t1 = torch.linspace(0.1, 2.0, B, dtype=F64)
    ids = torch.arange(B, dtype=F64)[:, None].expand(B, 2).clone()
    rate = torch.linspace(0.5, 1.5, B, dtype=F64)
    seen = []

    def f(x, t, idx, ids, rate, scale):
        assert torch.equal(ids[:, 0].long(), idx) and rate.shape == (x.shape[0],)
        seen.append(x.shape[0])
        return -scale * rate[:, None] * x

    res = fastflow.odeint(f, x0, 0.0, t1, method="dopri5", rtol=1e-9, atol=1e-12, with_index=True,
                          model_kwargs={"ids": ids, "rate": rate, "scale": 2.0})
    assert min(seen) < B  # rows did leave the batch
    torch.testing.assert_close(res.x, x0 * torch.exp(-2.0 * rate * t1)[:, None], rtol=1e-7, atol=1e-10)
    # without the index too, and with a fixed-step method
    res = fastflow.odeint(lambda x, t, rate: -rate[:, None] * x, x0, 0.0, 1.0, method="rk4", steps=50,
                          model_kwargs={"rate": rate})
    torch.testing.assert_close(res.x, x0 * torch.exp(-rate)[:, None], rtol=1e-7, atol=1e-9)


def test_model_kwargs_errors():
    x0 = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"model_kwargs\['labels'\] has first dimension 3, expected the batch size 4"):
        fastflow.odeint(lambda x, t, labels: x, x0, 0.0, 1.0, model_kwargs={"labels": torch.zeros(3)})
    with pytest.raises(TypeError, match="model_kwargs must be a dict"):
        fastflow.odeint(lambda x, t: x, x0, 0.0, 1.0, model_kwargs=[1])
    with pytest.raises(ValueError, match="first dimension"):
        fastflow.flow_sample(lambda x, t, y: x, x0, model_kwargs={"y": torch.zeros(5)})


@pytest.mark.parametrize("family,T,t_end", [
    (fastflow.RectifiedFlow(), 1.0, 1e-3),
    (fastflow.Gaussian(), 40.0, 1e-3),
])
def test_conditional_oracle_lands_in_its_own_class_under_dopri5(family, T, t_end):
    ref, ref_labels = classes()
    n = 60
    y = torch.arange(n) % 3
    oracle = fastflow.Oracle(family, ref, labels=ref_labels)
    x_T = family.prior(n, 3, T=T, generator=torch.Generator().manual_seed(1), dtype=F64)
    res = fastflow.flow_sample(oracle, x_T, t_start=T, t_end=t_end, model_kwargs={"labels": y})
    assert bool(res.success.all()) and int(res.nfe.min()) < int(res.nfe.max())  # rows left at different times
    assert bool(own_class(ref, ref_labels, res.x, y).all())
    # family_sample builds the same oracle
    res2 = fastflow.family_sample(family, ref, n, T=T, t_min=t_end, labels=ref_labels, model_kwargs={"labels": y},
                                  generator=torch.Generator().manual_seed(2))
    assert bool(own_class(ref, ref_labels, res2.x, y).all())
    # the null label asks for the unconditional field
    v_all = family.velocity(x_T, torch.full((n,), 0.5 * T, dtype=F64), ref)
    torch.testing.assert_close(oracle(x_T, torch.full((n,), 0.5 * T, dtype=F64), labels=torch.full((n,), -1)), v_all)


def test_pfgm_sample_with_labels():
    ref, ref_labels = classes(d=4)
    n = 24
    y = torch.arange(n) % 3
    by_class = {c: ref[ref_labels == c] for c in range(3)}

    def net_fn(x, z, labels):  # the exact normalised field of each sample's own class
        out = torch.empty(x.shape[0], x.shape[1] + 1, dtype=x.dtype)
        for c in range(3):
            rows = labels == c
            if rows.any():
                out[rows] = fastflow.pfgm.target(x[rows], z[rows], by_class[c])
        return out

    x_init = fastflow.pfgm.prior(n, (4,), z_max=40.0, generator=torch.Generator().manual_seed(0), dtype=F64)
    res = fastflow.pfgm.sample(net_fn, x_init, z_max=40.0, z_min=1e-3, model_kwargs={"labels": y})
    assert bool(res.success.all())
    assert bool(own_class(ref, ref_labels, res.x, y).all())


def test_guided_mixes_conditional_and_unconditional_in_one_call():
    ref, ref_labels = classes()
    fam = fastflow.Gaussian()
    oracle = fastflow.Oracle(fam, ref, labels=ref_labels)
    x = torch.randn(7, 3, dtype=F64) * 2
    t = torch.full((7,), 1.5, dtype=F64)
    y = torch.arange(7) % 3
    vc, vu = oracle(x, t, labels=y), fam.velocity(x, t, ref)
    for w in (0.0, 1.0, 2.5):
        calls = oracle.calls
        g = fastflow.guided(oracle, w, {"labels": -1})
        torch.testing.assert_close(g(x, t, labels=y), vu + w * (vc - vu), rtol=1e-12, atol=1e-12)
        assert oracle.calls == calls + 1  # one call on the doubled batch
    # tuple outputs (PFGM's (v_x, v_z)) are guided alike; other per-sample tensors are repeated
    model = lambda x, t, labels, s: (x * labels[:, None] * s[:, None], t * labels * s)  # noqa: E731
    s = torch.linspace(1, 2, 7, dtype=F64)
    vx, vt = fastflow.guided(model, 3.0, {"labels": 0})(x, t, labels=y.to(F64), s=s)
    torch.testing.assert_close(vx, 3.0 * x * y[:, None] * s[:, None])
    torch.testing.assert_close(vt, 3.0 * t * y * s)


def test_guided_sampling_with_the_exact_oracle():
    # w = 1: the conditional field; the samples land in their class under dopri5 with rows leaving the batch
    ref, ref_labels = classes()
    fam = fastflow.RectifiedFlow()
    oracle = fastflow.Oracle(fam, ref, labels=ref_labels)
    n = 30
    y = torch.arange(n) % 3
    x_T = fam.prior(n, 3, T=1.0, generator=torch.Generator().manual_seed(3), dtype=F64)
    res = fastflow.flow_sample(fastflow.guided(oracle, 1.0, {"labels": -1}), x_T, t_end=1e-3,
                               model_kwargs={"labels": y})
    assert bool(own_class(ref, ref_labels, res.x, y).all())


def test_guidance_errors():
    with pytest.raises(ValueError, match="null_kwargs must be a non-empty dict"):
        fastflow.guided(lambda x, t: x, 2.0, {})
    with pytest.raises(ValueError, match="null_kwargs must be a non-empty dict"):
        fastflow.guided(lambda x, t: x, 2.0, None)
    with pytest.raises(TypeError, match="scale"):
        fastflow.guided(lambda x, t: x, "2", {"labels": -1})
    g = fastflow.guided(lambda x, t, labels: x, 2.0, {"labels": -1})
    with pytest.raises(ValueError, match="without the conditions"):
        g(torch.zeros(2, 3), torch.ones(2))
    ref, ref_labels = classes()
    with pytest.raises(ValueError, match="built without labels"):
        fastflow.Oracle(fastflow.Gaussian(), ref)(ref, torch.ones(len(ref), dtype=F64), labels=ref_labels)
    with pytest.raises(ValueError, match="no reference point has label 7"):
        fastflow.Oracle(fastflow.Gaussian(), ref, labels=ref_labels)(ref[:2], torch.ones(2, dtype=F64),
                                                                     labels=torch.tensor([7, 0]))
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        fastflow.Oracle(fastflow.Gaussian(), ref, labels=ref_labels[:3])


def test_log_likelihood_with_labels_is_the_per_class_likelihood():
    # the conditional oracle's exact divergence, with labels in model_kwargs, equals each class's own run
    ref, ref_labels = classes(d=2)
    fam = fastflow.Gaussian()
    oracle = fastflow.Oracle(fam, ref, labels=ref_labels)
    x = ref[:6] + 0.1
    y = ref_labels[:6]
    T = 20.0

    def prior(z):
        return -0.5 * (z / T).square().sum(1) - 2 * math.log(T) - math.log(2 * math.pi)

    got = fastflow.log_likelihood(oracle, x, 1e-2, T, prior, rtol=1e-8, atol=1e-8, model_kwargs={"labels": y})
    assert got.derivative == "field"
    for c in range(3):
        rows = y == c
        want = fastflow.log_likelihood(fastflow.Oracle(fam, ref[ref_labels == c]), x[rows], 1e-2, T, prior,
                                       rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(got.logp[rows], want.logp, rtol=1e-6, atol=1e-6)
    # a plain callable with model_kwargs, differentiated by autograd
    f = lambda z, t, labels: oracle(z, t, labels=labels)  # noqa: E731
    got2 = fastflow.log_likelihood(f, x, 1e-2, T, prior, rtol=1e-8, atol=1e-8, model_kwargs={"labels": y})
    torch.testing.assert_close(got2.logp, got.logp, rtol=1e-5, atol=1e-5)

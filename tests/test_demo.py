"""``fastflow demo`` and ``fastflow info`` (fastflow/apps/demo/, fastflow/apps/cli.py): the metrics against known
answers, every recipe end to end at a tiny size, and the command line's errors."""
import json
import math

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from fastflow.apps import cli, demo


def test_sliced_wasserstein_known_answers():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 16, generator=g, dtype=torch.float64)
    assert demo.sliced_wasserstein(a, a) == 0.0
    # a shift v: each projection moves by v.u, so SWD^2 = E_u (v.u)^2 = |v|^2 / d
    v = torch.full((16,), 0.5, dtype=torch.float64)
    swd = demo.sliced_wasserstein(a, a + v, n_proj=4096)
    assert swd == pytest.approx(float(v.norm()) / math.sqrt(16), rel=0.05)
    # a scale: each projection scales by 2, SWD = |1 - 2| * E|proj| rms over quantiles ~ 1 (unit normal projections)
    swd = demo.sliced_wasserstein(a, 2 * a, n_proj=1024)
    assert 0.85 < swd < 1.05


def test_memorisation_known_answers():
    g = torch.Generator().manual_seed(1)
    train = torch.randn(300, 8, generator=g)
    test = torch.randn(100, 8, generator=g)
    copies = train[:50] + 1e-4 * torch.randn(50, 8, generator=g)
    m = demo.memorisation(copies, train, test)
    assert m["nn_ratio"] < 1e-3 and m["copies"] == 1.0
    fresh = torch.randn(100, 8, generator=g)  # new draws from the same law sit as far as the held-out points
    m = demo.memorisation(fresh, train, test)
    assert 0.7 < m["nn_ratio"] < 1.4 and m["copies"] < 0.1


def test_load_digits_split():
    train, test = demo.load_digits(seed=3)
    assert train.shape == (1437, 64) and test.shape == (360, 64)
    assert float(train.min()) == -1.0 and float(train.max()) == 1.0
    # disjoint rows, and the split depends on the seed
    assert torch.cdist(test, train).min() >= 0  # well-defined
    other, _ = demo.load_digits(seed=4)
    assert not torch.equal(train, other)


@pytest.mark.parametrize("method", demo.METHODS)
def test_demo_runs_every_recipe(tmp_path, method):
    cfg = demo.DemoConfig(method=method, iters=40, batch=64, ref=256, n_samples=64, sample_steps=6,
                          out=str(tmp_path / method), progress=False)
    m = demo.run(cfg)
    out = tmp_path / method
    assert (out / "samples.png").stat().st_size > 1000 and (out / "loss.png").stat().st_size > 1000
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["method"] == method and saved["config"]["iters"] == 40
    for key in ("swd", "swd_train_digits", "swd_gaussian", "nn_ratio", "copies", "nfe_per_sample"):
        assert math.isfinite(m[key]) and m[key] >= 0, key
    # the exact field of the training set memorises: its samples land on training digits
    assert m["exact_field_baseline"]["nn_ratio"] < 0.1 and m["exact_field_baseline"]["copies"] > 0.9
    gap = saved["field_gap"]
    if method == "pfgm":  # its network predicts PFGM's normalised (d+1)-field: no denoiser or velocity to compare
        assert "skipped" in gap and not (out / "field_gap.png").exists()
    else:
        assert (out / "field_gap.png").stat().st_size > 1000
        assert gap["target"] == ("velocity" if method == "rf" else "posterior_mean") and len(gap["t"]) == 8
        for name in ("train", "held_out"):
            assert all(math.isfinite(v) for v in gap[name]["excess"]) and min(gap[name]["loss_floor"]) >= 0
        # the exact field's own gap: none on the training digits (its mse is the floor up to sampling noise)
        assert max(gap["exact_field"]["train"]["rel_error"]) < 1e-5


def test_demo_learns(tmp_path):
    """A few hundred steps already beat the untrained network (which outputs c_skip x: shrunken noise)."""
    base = dict(method="stf", batch=128, ref=512, n_samples=300, sample_steps=10, progress=False)
    m0 = demo.run(demo.DemoConfig(iters=1, out=str(tmp_path / "a"), **base))
    m1 = demo.run(demo.DemoConfig(iters=400, out=str(tmp_path / "b"), **base))
    assert m1["swd"] < 0.7 * m0["swd"]


@pytest.mark.parametrize("kw,match", [
    (dict(method="ddpm"), "method must be one of"),
    (dict(iters=0), "iters must be a positive integer"),
    (dict(batch=512, ref=256), r"ref \(256\) must be >= batch"),
    (dict(ref=5000), "must be <= the 1437 training digits"),
])
def test_demo_rejects_bad_config(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        demo.run(demo.DemoConfig(out=str(tmp_path), progress=False, **kw))


def test_cli(tmp_path, capsys):
    assert cli.main(["info"]) == 0
    assert "field backends" in capsys.readouterr().out
    assert cli.main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fastflow"]
    assert cli.main(["demo", "--iters", "0", "--out", str(tmp_path)]) == 2
    assert "iters must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--method", "ddpm"])
    assert cli.main(["demo", "--method", "rf", "--iters", "20", "--batch", "32", "--ref", "64", "--samples", "32",
                     "--quiet", "--out", str(tmp_path / "rf")]) == 0
    assert "sliced W2 to held-out digits" in capsys.readouterr().out

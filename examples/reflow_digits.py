"""Reflow on the bundled digits: straighter trajectories and better one-step samples after one round.

Rectified flow's reflow (Liu et al. 2022): integrate a first velocity model from noise x1 to data, and train the
next model on the straight interpolations between each x1 and its image x0_hat. Here the first model is the
exact rectified-flow field of the training digits (``RectifiedFlow().velocity(x, t, train)``, no network: the
best a first round can be), so the comparison is

- ``exact field`` (1-RF): the first model itself;
- ``1-RF network``: a network trained as ``fastflow demo --method rf`` (target: the exact velocity of a
  reference batch; independent noise), the usual first round;
- ``2-RF network (reflow)``: the same network and budget, trained on the reflow pairs from
  ``fastflow.reflow.couple(exact_field, x1)``: target x1 - x0_hat on x_t = (1 - t) x0_hat + t x1.

For each: ``fastflow.straightness`` of 100-step Euler trajectories (1 = straight), and the sliced Wasserstein
distance to the held-out digits of Euler samples with 1, 2, 4 and 100 steps, beside the training digits' own
distance (the floor), and the fraction of samples that copy a training digit (nearest 3x closer than the second,
by ``fastflow.nearest``).

    python examples/reflow_digits.py --out reflow.png      # ~2 min on 2 CPU cores; --json for the numbers
"""
import argparse
import json
import time

import torch

import fastflow
from fastflow.apps.demo import MLP, load_digits, memorisation, sliced_wasserstein

STEPS = (1, 2, 4, 100)


def grid(x, rows=6, cols=10):
    """(rows*cols, 64) in [-1, 1] -> one image with 1-pixel gaps."""
    img = torch.full((rows * 9 - 1, cols * 9 - 1), -0.6)
    x = x[: rows * cols].detach().float().cpu().clamp(-1, 1).reshape(-1, 8, 8)
    for k in range(x.shape[0]):
        i, j = divmod(k, cols)
        img[i * 9:i * 9 + 8, j * 9:j * 9 + 8] = x[k]
    return img.numpy()


def train_net(loss_fn, iters, lr, device, seed, label):
    """A fresh MLP (the demo's) trained for ``iters`` Adam steps on ``loss_fn(net, gen)``, cosine decay."""
    torch.manual_seed(seed)
    net = MLP(64, 64).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    gen = torch.Generator(device=device).manual_seed(seed)
    t0 = time.perf_counter()
    for it in range(iters):
        loss = loss_fn(net, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 1000 == 0 or it == iters - 1:
            print(f"  {label}: iter {it:5d}  loss {loss.item():.4f}")
    print(f"  {label}: {iters} steps in {time.perf_counter() - t0:.0f} s")
    net.eval()
    return net


@torch.no_grad()
def evaluate(velocity, z, train, test):
    """Straightness of 100-step Euler paths, SWD of Euler samples at each of STEPS, copy rate at 100 steps."""
    out = {}
    for k in STEPS:
        res = fastflow.flow_sample(velocity, z, t_end=0.0, method="euler", steps=k,
                                   return_intermediates=(k == STEPS[-1]))
        out[f"swd_{k}"] = sliced_wasserstein(res.x, test)
        if k == STEPS[-1]:
            s = fastflow.straightness(res.intermediates)
            out["straightness_mean"] = float(s.mean())
            out["straightness_median"] = float(s.median())
            out["copies"] = memorisation(res.x, train, test)["copies"]
    out["samples_1"] = fastflow.flow_sample(velocity, z, t_end=0.0, method="euler", steps=1).x
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=8192, help="reflow pairs integrated from noise (default 8192)")
    p.add_argument("--iters", type=int, default=4000, help="training steps of each network (default 4000)")
    p.add_argument("--batch", type=int, default=256, help="training batch (default 256)")
    p.add_argument("--ref", type=int, default=1024, help="1-RF's reference batch for its target (default 1024)")
    p.add_argument("--samples", type=int, default=1000, help="samples per evaluation (default 1000)")
    p.add_argument("--t-min", type=float, default=1e-3, help="the exact field's end time (default 1e-3)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write a PNG of one-step samples here")
    p.add_argument("--json", default=None, help="write the numbers here")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    train, test = load_digits(args.seed, dev)              # (1437, 64), (360, 64) in [-1, 1]
    rf = fastflow.RectifiedFlow()                           # x_t = (1 - t) x0 + t x1, noise x1 at t = 1
    t_min = args.t_min

    def exact(x, t):                                        # the first model: the exact field of the digits
        return rf.velocity(x, t.clamp_min(t_min), train)

    gen = torch.Generator(device=dev).manual_seed(args.seed + 1)
    t0 = time.perf_counter()
    x1 = rf.prior(args.pairs, (64,), T=1.0, generator=gen, device=dev)
    x0_hat, x1 = fastflow.reflow.couple(exact, x1, path=rf, t_end=t_min, batch_size=2048, progress=True)
    print(f"reflow pairs: {tuple(x0_hat.shape)} in {time.perf_counter() - t0:.0f} s")

    def loss_1rf(net, g):                                   # the demo's rf recipe: exact target, independent noise
        x0 = train[torch.randint(0, train.shape[0], (args.batch,), generator=g, device=dev)]
        ref = torch.cat([x0, train[torch.randint(0, train.shape[0], (args.ref - args.batch,), generator=g,
                                                 device=dev)]])
        t = torch.rand(args.batch, generator=g, device=dev) * (1 - t_min) + t_min
        x = rf.perturb(x0, t, generator=g)
        with torch.no_grad():
            target = rf.velocity(x, t, ref)
        return (net(x, t) - target).square().mean()

    def loss_2rf(net, g):                                   # reflow: straight lines between the pairs
        i = torch.randint(0, args.pairs, (args.batch,), generator=g, device=dev)
        t = torch.rand(args.batch, generator=g, device=dev)
        s = rf.sample(x0_hat[i], t, x1=x1[i])
        return (net(s.x_t, t) - s.dx_t).square().mean()

    net1 = train_net(loss_1rf, args.iters, args.lr, dev, args.seed, "1-RF network")
    net2 = train_net(loss_2rf, args.iters, args.lr, dev, args.seed, "2-RF network (reflow)")

    z = rf.prior(args.samples, (64,), T=1.0, generator=torch.Generator(device=dev).manual_seed(args.seed + 2),
                 device=dev)
    models = {"exact field": exact, "1-RF network": net1, "2-RF network (reflow)": net2}
    results = {name: evaluate(v, z, train, test) for name, v in models.items()}
    floor = sliced_wasserstein(train[: len(test)], test)
    print(f"\nsliced W2 to the {len(test)} held-out digits (train digits themselves: {floor:.4f}); "
          "straightness of 100-step Euler paths (1 = straight); copies of training digits")
    print(f"{'model':24s} {'straight':>9s} " + " ".join(f"{'SWD ' + str(k) + ' st':>10s}" for k in STEPS)
          + f" {'copies':>7s}")
    for name, r in results.items():
        print(f"{name:24s} {r['straightness_mean']:9.4f} " + " ".join(f"{r[f'swd_{k}']:10.4f}" for k in STEPS)
              + f" {r['copies']:7.3f}")
    x = results["2-RF network (reflow)"]["samples_1"]
    print(f"samples: {tuple(x.shape)}, one Euler step of the reflowed network, sliced W2 to held-out digits "
          f"{results['2-RF network (reflow)']['swd_1']:.4f}")
    if args.json:
        keep = {n: {k: v for k, v in r.items() if k != "samples_1"} for n, r in results.items()}
        with open(args.json, "w") as fh:
            json.dump({"config": vars(args), "swd_floor_train_digits": floor, "results": keep}, fh, indent=1)
        print(f"wrote {args.json}")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
        panels = [(r["samples_1"], f"{n}: one Euler step\nSWD {r['swd_1']:.3f}, straightness "
                                   f"{r['straightness_mean']:.3f}") for n, r in results.items()]
        panels.append((test, f"held-out digits\n(training digits' SWD {floor:.3f})"))
        for ax, (im, title) in zip(axes, panels):
            ax.imshow(grid(im), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(args.out, dpi=110)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Build your own ODE diffusion: a new radial CDF psi_t(r), trained on the bundled digits and sampled.

The construction (docs/math.md, "Any radial CDF"): pick the probability psi_t(r) that the noise moves a data point
by at most r at time t. Here a mixture of two Gaussian shells with different schedules, s_1 = t and
s_2 = t (1 + t),

    psi_t(r) = 1/2 P_d(r / t) + 1/2 P_d(r / (t (1 + t))),    P_d(u) = P(chi_d <= u) = gammainc(d/2, u^2/2),

Gaussian near the data (small t) and twice as wide as any one Gaussian schedule at large t. It is not a scale
family, so its density and flux weights differ; fastflow derives both by autograd of psi. ``fam.perturb`` draws
x_t, ``fam.velocity(x, t, ref)`` is the exact empirical velocity of the reference batch (the regression target),
and the trained network is integrated from the prior at T down to t_min.

    python examples/custom_psi_train.py --iters 3000 --out custom_psi.png
"""
import argparse
import math

import torch

import fastflow
from fastflow.apps.demo import MLP, load_digits, sliced_wasserstein


def two_shell_psi(d):
    """psi_t(r) for points in R^d: elementwise torch ops, differentiable in r and t."""
    a = torch.tensor(d / 2.0, dtype=torch.float64)

    def psi(r, t):
        p = lambda u: torch.special.gammainc(a.to(u.dtype), 0.5 * u * u)  # noqa: E731  (P(chi_d <= u))
        return 0.5 * p(r / t) + 0.5 * p(r / (t * (1.0 + t)))

    return psi


def grid(x, rows=8, cols=8):
    """(rows*cols, 64) in [-1, 1] -> one image with 1-pixel gaps."""
    img = torch.full((rows * 9 - 1, cols * 9 - 1), -0.6)
    x = x[: rows * cols].detach().float().cpu().clamp(-1, 1).reshape(-1, 8, 8)
    for k in range(x.shape[0]):
        i, j = divmod(k, cols)
        img[i * 9:i * 9 + 8, j * 9:j * 9 + 8] = x[k]
    return img.numpy()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=3000, help="training steps (default 3000)")
    p.add_argument("--batch", type=int, default=256, help="training batch, also the reference batch (default 256)")
    p.add_argument("--samples", type=int, default=500, help="samples drawn at the end (default 500)")
    p.add_argument("--T", type=float, default=2.0, help="prior time (default 2)")
    p.add_argument("--t-min", type=float, default=0.01, help="end time of the sampler (default 0.01)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--out", default=None, help="write a PNG of samples next to held-out digits here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    train, test = load_digits(device=args.device)        # (N, 64) in [-1, 1]
    fam = fastflow.RadialCDF(two_shell_psi(train.shape[1]))  # checks psi's conditions; derivatives by autograd
    net = MLP(train.shape[1], train.shape[1]).to(args.device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.iters)
    log_lo, log_hi = math.log(args.t_min), math.log(args.T)

    def velocity(x, t):                                   # the network: (x, t) -> dx/dt
        t = t[:, None].to(x.dtype)
        c_in = (0.25 + 0.5 * t**2 * (1 + (1 + t) ** 2)).rsqrt()  # 1 / the spread per coordinate of x_t
        return net(c_in * x, t[:, 0].log() / 4)

    for it in range(args.iters):
        x0 = train[torch.randint(0, train.shape[0], (args.batch,), device=args.device)]
        t = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(args.batch, device=args.device))
        x = fam.perturb(x0, t)                            # radius psi_t^{-1}(U), a uniform direction
        with torch.no_grad():
            target = fam.velocity(x, t, x0)               # exact sum_j phi~_j (x - x0_j) / sum_j phi_j
        loss = (velocity(x, t) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 500 == 0 or it == args.iters - 1:
            print(f"iter {it:5d}  loss {loss.item():.4f}")

    with torch.no_grad():
        x_T = fam.prior(args.samples, train.shape[1:], T=args.T, device=args.device)
        res = fastflow.flow_sample(velocity, x_T, t_start=args.T, t_end=args.t_min, rtol=1e-4, atol=1e-4)
    x = res.x
    swd = sliced_wasserstein(x, test)
    print(f"samples: {tuple(x.shape)}, mean NFE {res.nfe.float().mean():.0f}, sliced W2 to held-out digits "
          f"{swd:.4f} (train digits: {sliced_wasserstein(train[: len(test)], test):.4f})")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
        for ax, im, title in ((axes[0], x, "samples of the new psi"), (axes[1], test, "held-out digits")):
            ax.imshow(grid(im), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_title(title)
            ax.axis("off")
        fig.suptitle(f"psi_t(r) = P_d(r/t)/2 + P_d(r/(t(1+t)))/2 on 8x8 digits; sliced W2 {swd:.3f}", fontsize=9)
        fig.tight_layout()
        fig.savefig(args.out, dpi=110)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

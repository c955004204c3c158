"""A minimal EDM / PFGM++ training loop with fastflow's reference-batch targets and the EDM sampler.

PFGM++ (Xu et al. 2023) with augmented dimension D interpolates between PFGM (D = 1) and EDM (D -> inf). With
r = sigma sqrt(D) it trains like EDM: sigma from EDM's log-normal, the EDM preconditioning and loss weight,
and the same Heun sampler in sigma. fastflow supplies
- the perturbation with the exact Poisson(D) radius law       ``fastflow.Poisson(D).perturb``
- the target: the posterior mean over a reference batch, which has much less variance than the clean x0
  (the stable target field, Xu et al. 2023)                   ``fastflow.pfgmpp_target`` / ``fastflow.stf_target``
- the prior (a multivariate Student-t for finite D)           ``fastflow.Poisson(D).prior``
- the preconditioning and loss weight                         ``fastflow.EDMPrecond``
- the sampler                                                 ``fastflow.edm_sample``

    python examples/edm_pfgmpp_train.py --D 128        # PFGM++
    python examples/edm_pfgmpp_train.py --D inf        # EDM with the STF target
"""
import argparse
import math

import torch

import fastflow
from fastflow.apps.demo import MLP, load_digits, sliced_wasserstein


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--D", type=float, default=128.0, help="augmented dimensions; inf: the Gaussian (EDM)")
    p.add_argument("--iters", type=int, default=3000, help="training steps (default 3000)")
    p.add_argument("--batch", type=int, default=256, help="training batch (default 256)")
    p.add_argument("--ref", type=int, default=1024, help="reference batch of the target")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--samples", type=int, default=500, help="samples drawn at the end (default 500)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    train, test = load_digits(device=args.device)
    D = None if math.isinf(args.D) else args.D
    family = fastflow.Gaussian() if D is None else fastflow.Poisson(D)
    radius = (lambda s: s) if D is None else (lambda s: s * math.sqrt(D))   # the family's time for sigma
    sigma_data = float(train.std())
    model = fastflow.EDMPrecond(MLP(train.shape[1], train.shape[1], 256), sigma_data, D=D).to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    for it in range(args.iters):
        ref = train[torch.randperm(train.shape[0], device=args.device)[:args.ref]]
        x0 = ref[:args.batch]                                  # the batch is part of its reference set
        sigma = (torch.randn(args.batch, device=args.device) * 1.2 - 1.2).exp()   # EDM's log-normal
        x = family.perturb(x0, radius(sigma))
        with torch.no_grad():
            target = fastflow.stf_target(x, sigma, ref) if D is None else fastflow.pfgmpp_target(x, sigma, ref, D=D)
        weight = model.loss_weight(sigma)                      # EDM's, fastflow.edm_loss_weight
        loss = (weight[:, None] * (model(x, sigma) - target).square()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 500 == 0 or it == args.iters - 1:
            print(f"iter {it:5d}  loss {loss.item():.4f}")

    with torch.no_grad():
        x_init = family.prior(args.samples, (train.shape[1],), T=radius(80.0), device=args.device)
        res = fastflow.edm_sample(model, x_init, sigma_max=80.0, steps=18, D=D)
    print(f"samples: {tuple(res.x.shape)}, {int(res.nfe[0])} evaluations per sample, "
          f"sliced W2 to held-out digits {sliced_wasserstein(res.x, test):.4f}")


if __name__ == "__main__":
    main()

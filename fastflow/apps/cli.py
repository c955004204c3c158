"""The fastflow command (also python -m fastflow).

    fastflow info                       backends, devices and versions
    fastflow demo [--method pfgmpp ...] train on the bundled 8x8 digits, sample, write PNGs and metrics.json
    fastflow --version

The benchmarks run from a source checkout: python benchmarks/run.py (see README.md).
"""
from __future__ import annotations

import argparse
import json
import sys


def _info(args) -> int:
    from .. import __version__, backends

    info = backends()
    if args.json:
        print(json.dumps({"fastflow": __version__, **info}, indent=1))
        return 0
    print(f"fastflow {__version__}  (torch {info['torch']}, triton {info['triton_version'] or 'not installed'})")
    print(f"  devices:         {', '.join(info['devices'])}")
    print(f"  fastflow._C:     {'built' if info['C'] else 'not built (' + str(info['C_error']) + ')'}"
          f"{', with CUDA kernels' if info['C_cuda'] else ''}")
    if not info["triton"]:
        trit = f"not available ({info['triton_error']})" if info.get("triton_error") else "not installed"
    elif info["triton_interpret"]:
        trit = "interpreter (TRITON_INTERPRET=1: on CPU tensors, slowly)"
    elif info["cuda"]:
        trit = "compiled for the GPU"
    else:
        trit = "installed; no CUDA device (they run on CUDA tensors, or under TRITON_INTERPRET=1)"
    print(f"  triton kernels:  {trit}")
    print(f"  field backends:  {', '.join(info['field_backends'])}")
    return 0


def _demo(args) -> int:
    from .demo import DemoConfig, run

    cfg = DemoConfig(method=args.method, iters=args.iters, batch=args.batch, ref=args.ref, lr=args.lr,
                     n_samples=args.samples, sample_steps=args.sample_steps, device=args.device, seed=args.seed,
                     out=args.out, progress=not args.quiet)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    m = run(cfg)
    gap_png = "" if "skipped" in m["field_gap"] else " field_gap.png,"
    print(f"\nfastflow demo ({m['method']}): wrote {args.out}/samples.png, loss.png,{gap_png} metrics.json")
    print(f"  sliced W2 to held-out digits: {m['swd']:.4f}   (training digits: {m['swd_train_digits']:.4f}, "
          f"fitted Gaussian: {m['swd_gaussian']:.4f})")
    print(f"  nearest-training-digit ratio: {m['nn_ratio']:.3f}   (1: as far as new data; exact field: "
          f"{m['exact_field_baseline']['nn_ratio']:.3f})")
    print(f"  copies (nearest 3x closer than 2nd): {m['copies']:.1%}   (held-out digits: {m['copies_heldout']:.1%}; "
          f"exact field: {m['exact_field_baseline']['copies']:.1%})")
    print(f"  training {m['train_seconds']:.0f} s, sampling {m['sample_seconds']:.1f} s "
          f"({m['nfe_per_sample']:.0f} evaluations per sample)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .. import __version__
    from .demo import METHODS, DemoConfig

    d = DemoConfig()
    p = argparse.ArgumentParser(prog="fastflow", description=__doc__.split("\n\n")[0],
                                epilog="The benchmarks run from a source checkout: python benchmarks/run.py")
    p.add_argument("--version", action="version", version=f"fastflow {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser("info", help="backends, devices and versions")
    pi.add_argument("--json", action="store_true", help="print JSON")
    pi.set_defaults(fn=_info)
    pd = sub.add_parser("demo", help="train on the bundled 8x8 digits, sample, and report",
                        description="Train a small network on scikit-learn's 8x8 digits with fastflow's targets, "
                                    "sample it with fastflow's samplers, and write samples.png, loss.png and "
                                    "metrics.json (see fastflow/apps/demo/ for the recipes and metrics).")
    pd.add_argument("--method", choices=METHODS, default=d.method, help=f"recipe (default {d.method})")
    pd.add_argument("--iters", type=int, default=d.iters, help=f"training steps (default {d.iters})")
    pd.add_argument("--batch", type=int, default=d.batch, help=f"training batch (default {d.batch})")
    pd.add_argument("--ref", type=int, default=d.ref, help=f"reference batch of the target (default {d.ref})")
    pd.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    pd.add_argument("--samples", type=int, default=d.n_samples, help=f"samples drawn (default {d.n_samples})")
    pd.add_argument("--sample-steps", type=int, default=d.sample_steps,
                    help=f"EDM schedule steps for pfgmpp / stf (default {d.sample_steps})")
    pd.add_argument("--device", default=d.device, help="cpu or cuda (default cpu)")
    pd.add_argument("--seed", type=int, default=d.seed, help=f"seed of the data split, network and draws "
                    f"(default {d.seed})")
    pd.add_argument("--threads", type=int, default=0,
                    help="CPU threads for torch (torch.set_num_threads; default: torch's choice, one per core). "
                         "On a busy machine fewer threads can be much faster: see README, Command line")
    pd.add_argument("--out", default=d.out, help=f"output folder (default {d.out})")
    pd.add_argument("--quiet", action="store_true", help="no progress bars")
    pd.set_defaults(fn=_demo)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, TypeError, ImportError, FileNotFoundError, RuntimeError) as e:
        print(f"fastflow {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The demo's figures: samples next to held-out digits, the loss curve, and the field gap."""
from __future__ import annotations

from pathlib import Path

import torch


def _grid(x: torch.Tensor, rows: int, cols: int):
    """(rows*cols, 64) in [-1, 1] -> a (rows*9-1, cols*9-1) image with 1-pixel gaps."""
    img = torch.full((rows * 9 - 1, cols * 9 - 1), -0.6)  # light gray gaps
    x = x[: rows * cols].detach().float().cpu().clamp(-1, 1).reshape(-1, 8, 8)
    for k in range(x.shape[0]):
        i, j = divmod(k, cols)
        img[i * 9:i * 9 + 8, j * 9:j * 9 + 8] = x[k]
    return img.numpy()


def save_plots(out: Path, samples, test, losses, method: str, metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    for ax, x, title in ((axes[0], samples, f"fastflow {method}: samples"), (axes[1], test, "held-out digits")):
        ax.imshow(_grid(x, 10, 10), cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"SWD to held-out {metrics['swd']:.3f} (train digits {metrics['swd_train_digits']:.3f}, "
                 f"fitted Gaussian {metrics['swd_gaussian']:.3f}); nearest-train ratio "
                 f"{metrics['nn_ratio']:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    it = torch.arange(1, len(losses) + 1)
    ax.plot(it, losses, lw=0.5, alpha=0.4, label="loss")
    ema, smooth = losses[0], []
    for v in losses:
        ema = 0.98 * ema + 0.02 * v
        smooth.append(ema)
    ax.plot(it, smooth, lw=1.5, label="EMA (0.98)")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.set_title(f"fastflow demo ({method})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=120)
    plt.close(fig)


def save_field_gap(out: Path, gap: dict, method: str) -> None:
    """field_gap.png: the network's excess loss (mse - loss floor, +-2 standard errors) against the noise level on a
    log axis, for training and held-out digits, beside the exact field's (which memorises); ``gap`` as
    ``metrics["field_gap"]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = gap["t"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, color in (("train", "C0"), ("held_out", "C1")):
        label = "training digits" if name == "train" else "held-out digits"
        ex = torch.tensor(gap[name]["excess"])
        se = torch.tensor(gap[name]["excess_stderr"])
        ax.errorbar(t, ex, yerr=2 * se, color=color, marker="o", ms=3, capsize=2, label=f"network, {label}")
        ax.plot(t, gap["exact_field"][name]["excess"], color=color, ls="--", lw=1,
                label=f"exact field, {label}")
    # a linear y: the held-out excess can be negative (the network denoises new digits better than the exact field
    # of the training digits, whose posterior variance is the floor)
    ax.set_xscale("log")
    ax.axhline(0.0, color="gray", lw=0.5)
    ax.set_xlabel(f"noise level {gap['t_name']}")
    what = "velocity" if gap["target"] == "velocity" else "denoising"
    ax.set_ylabel(f"excess {what} loss per coordinate (mse - floor)")
    ax.set_title(f"fastflow demo ({method}): loss above the exact floor, n = {gap['n']} per point", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "field_gap.png", dpi=120)
    plt.close(fig)

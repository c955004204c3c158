"""The demo's figures: samples next to held-out digits, and the loss curve."""
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

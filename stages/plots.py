"""Pictures that work offline: matplotlib PNGs (no chart library fetched from the web)."""
from __future__ import annotations

from pathlib import Path

from stages import files


def training_curve(history: list[dict], baselines: dict[str, float], path: str | Path,
                   title: str = "training") -> None:
    """loss and val_loss per epoch, with the trivial predictors' validation loss as dashed lines,
    on a log scale; written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    epochs = [row["epoch"] for row in history]
    for key, style in (("loss", "-"), ("val_loss", "-")):
        values = [row.get(key) for row in history]
        if any(v is not None for v in values):
            ax.plot(epochs, values, style, marker="." if len(epochs) < 30 else None, label=key)
    for (name, value), colour in zip(sorted(baselines.items()), ("C2", "C3", "C4")):
        ax.axhline(value, linestyle="--", linewidth=1, color=colour, label=f"val, {name}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    positive = [v for row in history for v in (row.get("loss"), row.get("val_loss"))
                if v is not None and v > 0] + [v for v in baselines.values() if v > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def spectrogram(samples, sample_rate: int, path: str | Path, title: str = "",
                max_hz: float = 8000.0) -> None:
    """Log-power spectrogram (dB, 2048-sample Hann frames, hop 512) up to `max_hz`, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    freqs, times, power = power_spectrogram(np.asarray(samples, np.float64), sample_rate)
    keep = freqs <= max_hz
    db = 10 * np.log10(power[keep] + 1e-12)
    fig, ax = plt.subplots(figsize=(9, 4), dpi=100)
    mesh = ax.pcolormesh(times, freqs[keep], db, shading="auto", cmap="magma",
                         vmin=db.max() - 90, vmax=db.max())
    fig.colorbar(mesh, ax=ax, label="dB")
    ax.set_xlabel("seconds")
    ax.set_ylabel("Hz")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def power_spectrogram(x, sample_rate: int, nperseg: int = 2048):
    """(freqs, times, power (n_freqs, n_frames)): scipy.signal.spectrogram's one-sided power
    spectral density of Hann frames every nperseg // 4, each frame's mean removed, in numpy
    (importing scipy.signal costs ~1 s of every stage that draws one)."""
    import numpy as np
    nper = min(nperseg, max(16, len(x)))
    x = np.pad(x, (0, max(0, nper - len(x))))
    hop = nper - nper * 3 // 4
    rows = np.lib.stride_tricks.sliding_window_view(x, nper)[::hop]
    window = np.hanning(nper + 1)[:-1]
    spec = np.fft.rfft((rows - rows.mean(axis=1, keepdims=True)) * window, axis=1)
    power = (spec.real ** 2 + spec.imag ** 2) / (sample_rate * (window ** 2).sum())
    power[:, 1:(nper + 1) // 2] *= 2                 # one-sided: every bin but DC (and Nyquist)
    times = (nper / 2 + hop * np.arange(len(rows))) / sample_rate
    return np.fft.rfftfreq(nper, 1 / sample_rate), times, power.T

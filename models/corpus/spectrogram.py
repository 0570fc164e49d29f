"""A mel-spectrogram front end built in torch, shaped like openwakeword's ``melspectrogram.onnx``.

The STFT is two Conv1d layers whose kernels are the Hann-windowed DFT matrices (real and
imaginary parts, no centring), the power spectrum is ``real ** 2 + imag ** 2`` (``Pow``), the
mel filterbank is a ``MatMul``, then ``10 * log10(clamp(mel, 1e-10))``. openwakeword feeds it
audio at int16 scale (samples up to 32767 as float32), so the power spectrum reaches ~1e13 and
only the final ``Log`` brings it back into FP16 range. Imports torch: build workers only.
"""

from __future__ import annotations

import math

import numpy as np
import torch

MIN_POWER = 1e-10


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular HTK-mel filters ``(n_fft // 2 + 1, n_mels)``, ready for ``power @ filters``."""

    def to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    edges_mel = np.linspace(to_mel(np.array(fmin)), to_mel(np.array(fmax)), n_mels + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    upper = (edges[2:, None] - freqs[None, :]) / (edges[2:, None] - edges[1:-1, None])
    return np.maximum(0.0, np.minimum(lower, upper)).T.astype(np.float32)


def dft_kernels(n_fft: int, win_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Conv1d kernels ``(n_fft // 2 + 1, 1, n_fft)``: a centred periodic Hann window times cos and -sin."""
    window = np.zeros(n_fft)
    start = (n_fft - win_length) // 2
    window[start : start + win_length] = np.hanning(win_length + 1)[:-1]
    bins = np.arange(n_fft // 2 + 1)[:, None]
    angle = 2 * np.pi * bins * np.arange(n_fft)[None, :] / n_fft
    real = (window * np.cos(angle))[:, None, :]
    imag = (-window * np.sin(angle))[:, None, :]
    return real.astype(np.float32), imag.astype(np.float32)


class MelSpectrogram(torch.nn.Module):
    """Waveforms ``(batch, samples)`` -> log-mel ``(batch, 1, frames, n_mels)`` in dB."""

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 160,
        n_mels: int = 32,
        fmin: float = 60.0,
        fmax: float = 3800.0,
    ) -> None:
        super().__init__()
        bins = n_fft // 2 + 1
        real, imag = dft_kernels(n_fft, win_length)
        self.real = torch.nn.Conv1d(1, bins, n_fft, stride=hop_length, bias=False)
        self.imag = torch.nn.Conv1d(1, bins, n_fft, stride=hop_length, bias=False)
        with torch.no_grad():
            self.real.weight.copy_(torch.from_numpy(real))
            self.imag.weight.copy_(torch.from_numpy(imag))
        filters = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
        self.register_buffer("filters", torch.from_numpy(filters))
        self.scale = 10.0 / math.log(10.0)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        """The log-mel spectrogram of ``waves``."""
        frames = waves.unsqueeze(1)
        power = self.real(frames).pow(2.0) + self.imag(frames).pow(2.0)  # (batch, bins, frames)
        mel = torch.matmul(power.transpose(1, 2), self.filters)  # (batch, frames, n_mels)
        return (torch.log(torch.clamp(mel, min=MIN_POWER)) * self.scale).unsqueeze(1)

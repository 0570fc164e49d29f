"""A voice-activity detector shaped like silero-vad v5's ONNX graph, built in torch.

Inputs ``input (batch, samples)``, ``state (2, batch, hidden)`` and a scalar int64 ``sr``;
outputs ``output (batch, 1)`` (speech probability) and ``stateN``. The sample rate picks the
branch with ``If(Equal(sr, 16000))``, else ``If(Equal(sr, 8000))``, else a Gather whose index is
out of range: like silero-vad, the graph has no path for other rates, so generated inputs run
only with the value the model compares ``sr`` with. The module is scripted (``torch.jit.script``)
so the TorchScript exporter keeps the branches as ``If`` nodes. Imports torch: build workers only.
"""

from __future__ import annotations

import torch

from models.corpus.spectrogram import dft_kernels


class _Stft(torch.nn.Module):
    """Magnitude spectrum by Conv1d with Hann-windowed DFT kernels (no centring)."""

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        bins = n_fft // 2 + 1
        real, imag = dft_kernels(n_fft, n_fft)
        self.real = torch.nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        self.imag = torch.nn.Conv1d(1, bins, n_fft, stride=hop, bias=False)
        with torch.no_grad():
            self.real.weight.copy_(torch.from_numpy(real))
            self.imag.weight.copy_(torch.from_numpy(imag))

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        frames = waves.unsqueeze(1)
        return torch.sqrt(self.real(frames) ** 2 + self.imag(frames) ** 2 + 1e-9)


class SileroLikeVad(torch.nn.Module):
    """(input, state, sr) -> (speech probability, new LSTM state); one path per sample rate."""

    def __init__(self, hidden: int = 32, n_fft_16k: int = 256, n_fft_8k: int = 128) -> None:
        super().__init__()
        self.hidden = hidden
        self.stft16 = _Stft(n_fft_16k, n_fft_16k // 2)
        self.stft8 = _Stft(n_fft_8k, n_fft_8k // 2)
        self.encoder16 = torch.nn.Conv1d(n_fft_16k // 2 + 1, hidden, 3, padding=1)
        self.encoder8 = torch.nn.Conv1d(n_fft_8k // 2 + 1, hidden, 3, padding=1)
        self.cell = torch.nn.LSTMCell(hidden, hidden)
        self.decoder = torch.nn.Linear(hidden, 1)

    def forward(
        self, waves: torch.Tensor, state: torch.Tensor, sr: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The speech probability of ``waves`` at rate ``sr``, and the next ``state``."""
        if bool(sr == 16000):
            features = torch.relu(self.encoder16(torch.log(self.stft16(waves))))
        elif bool(sr == 8000):
            features = torch.relu(self.encoder8(torch.log(self.stft8(waves))))
        else:
            index = torch.full([1], 1 << 30, dtype=torch.long)  # past any waveform's end: fails at run time
            features = torch.index_select(waves, 1, index).unsqueeze(1).expand(-1, self.hidden, -1)
        pooled = features.mean(dim=2)
        h, c = self.cell(pooled, (state[0], state[1]))
        return torch.sigmoid(self.decoder(h)), torch.stack([h, c])


def scripted(**config: int) -> torch.jit.ScriptModule:
    """``SileroLikeVad(**config)``, scripted so the exporter keeps its rate branches."""
    return torch.jit.script(SileroLikeVad(**config).eval())

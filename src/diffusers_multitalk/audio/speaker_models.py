"""The two small networks behind the embedded diarizer, with weights that ship inside PyPI wheels (no hub download).

* :class:`SileroVAD`: voice activity from the ``silero-vad`` wheel (``silero_vad/data/silero_vad.jit``, 2.3 MB,
  MIT; only its tensors are used). The network is rebuilt here in plain torch so that a whole recording runs as one batch through its
  convolutional front end and one ``nn.LSTM`` call (the package's own TorchScript model takes one 32 ms chunk per
  call: ~19,000 calls for 10 minutes). The package is never imported: its ``__init__`` calls
  ``torch.set_num_threads(1)``, which would slow down everything else in the process.
* :class:`VoiceEncoder`: speaker embeddings (a 3-layer LSTM d-vector, 256 numbers on the unit sphere) from the
  ``resemblyzer`` wheel (``resemblyzer/pretrained.pt``, 17 MB, Apache-2.0). The package is never imported either:
  it imports ``webrtcvad``, whose module needs ``pkg_resources`` (gone from current setuptools), and
  ``scipy.ndimage.morphology``; only its weight file is read.

Both files are found with ``importlib.util.find_spec`` (which locates a package without running it).
"""

from __future__ import annotations

import importlib.util
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn


__all__ = [
    "CONVERSATION_INSTALL_HINT",
    "SAMPLE_RATE",
    "VAD_CHUNK",
    "MEL_HOP",
    "SileroVAD",
    "VoiceEncoder",
    "package_file",
    "torch_cpu_settings",
]

SAMPLE_RATE = 16000
VAD_CHUNK = 512  # samples the VAD scores at once (32 ms at 16 kHz), as silero-vad's 16 kHz model expects
_VAD_CONTEXT = 64  # samples of the previous chunk the model sees in front of each chunk
MEL_HOP = 160  # 10 ms: the voice encoder's frame rate
_MEL_WINDOW = 400  # 25 ms
_MEL_BANDS = 40
_ENCODER_TARGET_DBFS = -30.0  # the loudness resemblyzer normalises utterances to before embedding them

CONVERSATION_INSTALL_HINT = 'pip install "diffusers-multitalk[conversation]" (or: pip install silero-vad resemblyzer)'


def package_file(module: str, relative: str, distribution: str) -> Path:
    """The path of a data file inside an installed package, without importing the package.

    Raises ``ImportError`` naming what to install when the package or its file is missing."""
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    where = f"package '{module}' is not installed" if not locations else f"'{relative}' is missing from {locations[0]}"
    raise ImportError(
        f"The embedded diarizer needs the weights that ship in the '{distribution}' wheel, but the {where}. "
        f"Install them with `{CONVERSATION_INSTALL_HINT}`."
    )


@contextmanager
def torch_cpu_settings(threads: int = 1):
    """Run small recurrent networks fast on a CPU: ``threads`` intra-op threads (the LSTMs' steps are tiny
    matrix products; on a loaded 2-core machine, 2 threads made the VAD 80x and the encoder 3-8x slower than 1,
    measured) and denormal floats flushed to zero (decaying LSTM states reach them; 10-100x slower otherwise).
    Both are restored afterwards (denormal flushing to torch's default, off)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(previous)


class SileroVAD(nn.Module):
    """Silero VAD v5/v6 (16 kHz): speech probability for each 32 ms chunk of a waveform.

    Per chunk: the chunk with the previous chunk's last 64 samples in front, reflect-padded by 64 at the end, goes
    through a learned STFT (a strided convolution, magnitude of 129 bins), four convolutions down to one 128-vector,
    an LSTM cell whose state runs through the whole recording, and a sigmoid. Everything but the LSTM is
    independent per chunk, so :meth:`probabilities` batches it and runs the LSTM over the sequence in one call.
    """

    def __init__(self):
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)
        self.conv1 = nn.Conv1d(129, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        self.lstm = nn.LSTM(128, 128, batch_first=True)
        self.final_conv = nn.Conv1d(128, 1, 1)

    @classmethod
    def from_package(cls) -> SileroVAD:
        # The TorchScript file is the package's default model (v6); its `silero_vad_16k.safetensors` holds other
        # (older) weights. Only the tensors are taken from the script module: its per-chunk forward is not used.
        path = package_file("silero_vad", "data/silero_vad.jit", "silero-vad")
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; loading its tensors still works
            warnings.simplefilter("ignore", DeprecationWarning)
            script = torch.jit.load(str(path), map_location="cpu")
        # "_model." is the 16 kHz network ("_model_8k." the 8 kHz one).
        source = {k[len("_model.") :]: v for k, v in script.state_dict().items() if k.startswith("_model.")}
        state = {"stft_conv.weight": source["stft.forward_basis_buffer"]}
        for i in range(4):
            for part in ("weight", "bias"):
                state[f"conv{i + 1}.{part}"] = source[f"encoder.{i}.reparam_conv.{part}"]
        # The LSTMCell has the gate layout of a one-layer nn.LSTM, which runs a whole sequence in one call.
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            state[f"lstm.{name}_l0"] = source[f"decoder.rnn.{name}"]
        for part in ("weight", "bias"):
            state[f"final_conv.{part}"] = source[f"decoder.decoder.2.{part}"]
        model = cls()
        model.load_state_dict(state)
        return model.eval()

    def _encode(self, chunks: torch.Tensor) -> torch.Tensor:
        """``[B, 64 + 512]`` samples -> ``[B, 128]`` features (independent per chunk)."""
        x = nn.functional.pad(chunks, (0, _VAD_CONTEXT), mode="reflect").unsqueeze(1)
        x = self.stft_conv(x)
        x = torch.sqrt(x[:, :129] ** 2 + x[:, 129:] ** 2)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = torch.relu(conv(x))
        return x.squeeze(-1)

    @torch.inference_mode()
    def probabilities(self, wave: np.ndarray, block_chunks: int = 2048) -> np.ndarray:
        """Speech probability of each 512-sample chunk of a 16 kHz waveform (the last chunk zero-padded).

        The recording goes through in blocks of ``block_chunks`` chunks (65 s) with the LSTM state carried over,
        so memory does not grow with its length and the result equals one pass over the whole."""
        wave = np.asarray(wave, dtype=np.float32)
        n_chunks = max(1, -(-len(wave) // VAD_CHUNK))
        padded = np.zeros(_VAD_CONTEXT + n_chunks * VAD_CHUNK, dtype=np.float32)
        padded[_VAD_CONTEXT : _VAD_CONTEXT + len(wave)] = wave
        signal = torch.from_numpy(padded)
        out = np.empty(n_chunks, dtype=np.float32)
        state = None
        for first in range(0, n_chunks, block_chunks):
            count = min(block_chunks, n_chunks - first)
            span = signal[first * VAD_CHUNK : (first + count) * VAD_CHUNK + _VAD_CONTEXT]
            chunks = span.unfold(0, VAD_CHUNK + _VAD_CONTEXT, VAD_CHUNK)  # [count, 576], views of the signal
            features, state = self.lstm(self._encode(chunks)[None], state)
            logits = self.final_conv(torch.relu(features[0]).T[None])[0, 0]
            out[first : first + count] = torch.sigmoid(logits).numpy()
        return out


class VoiceEncoder(nn.Module):
    """Resemblyzer's GE2E voice encoder: 40-band mel power frames (25 ms windows, 10 ms hops, no log) of a 1.6 s
    partial utterance -> 3-layer LSTM (256) -> linear -> ReLU -> L2 norm: a 256-number voice print."""

    window_frames = 160  # the 1.6 s partial utterances it was trained on

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(_MEL_BANDS, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)

    @classmethod
    def from_package(cls) -> VoiceEncoder:
        path = package_file("resemblyzer", "pretrained.pt", "resemblyzer")
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
        state = {k: v for k, v in checkpoint["model_state"].items() if k.startswith(("lstm.", "linear."))}
        model = cls()
        model.load_state_dict(state)
        return model.eval()

    @staticmethod
    def mel_frames(wave: np.ndarray, first: int, stop: int) -> np.ndarray:
        """``[stop - first, 40]`` float32 mel power frames ``first .. stop - 1`` of the 10 ms frame grid: frame ``t``
        is the 25 ms window centred on the middle of samples ``160 t .. 160 t + 159`` (zeros beyond the ends)."""
        import librosa

        lead = (_MEL_WINDOW - MEL_HOP) // 2  # 120 samples before a frame's 10 ms, 120 after
        begin, end = first * MEL_HOP - lead, (stop - 1) * MEL_HOP - lead + _MEL_WINDOW
        segment = np.zeros(end - begin, dtype=np.float32)
        lo, hi = max(begin, 0), min(end, len(wave))
        if hi > lo:
            segment[lo - begin : hi - begin] = wave[lo:hi]
        mel = librosa.feature.melspectrogram(
            y=segment, sr=SAMPLE_RATE, n_fft=_MEL_WINDOW, hop_length=MEL_HOP, n_mels=_MEL_BANDS, center=False
        )
        return np.ascontiguousarray(mel.T, dtype=np.float32)

    @staticmethod
    def frame_power(wave: np.ndarray, first: int, stop: int) -> np.ndarray:
        """Mean square sample of frames ``first .. stop - 1`` of the 10 ms grid (the loudness windows are brought
        to the encoder's level by)."""
        segment = np.zeros((stop - first) * MEL_HOP, dtype=np.float32)
        part = np.asarray(wave[first * MEL_HOP : stop * MEL_HOP], dtype=np.float32)
        segment[: len(part)] = part
        return (segment.reshape(-1, MEL_HOP).astype(np.float64) ** 2).mean(axis=1)

    @torch.inference_mode()
    def embed(self, mel: np.ndarray, power: np.ndarray, starts, lengths, batch: int = 128) -> np.ndarray:
        """Embeddings ``[N, 256]`` of the windows ``mel[s : s + n]`` (``s, n`` from ``starts, lengths``, at most
        :attr:`window_frames` long) of mel frames ``[T, 40]``. Each window is first brought to -30 dBFS as
        resemblyzer does with its utterances (mel power scales with the square of the gain; ``power`` is each
        frame's mean square sample). Shorter windows are packed, so the LSTM's last state is that of their last
        frame; windows are cut batch by batch, so memory does not grow with their number."""
        target = 10 ** (_ENCODER_TARGET_DBFS / 10)
        starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
        out = np.empty((len(starts), 256), dtype=np.float32)
        for first in range(0, len(starts), batch):
            s, n = starts[first : first + batch], lengths[first : first + batch]
            offsets = np.arange(int(n.max()))
            valid = offsets[None, :] < n[:, None]
            index = np.where(valid, s[:, None] + offsets, 0)
            gains = target / np.maximum((power[index] * valid).sum(axis=1) / n, 1e-10)
            mels = torch.from_numpy((mel[index] * (valid * gains[:, None])[:, :, None]).astype(np.float32))
            packed = nn.utils.rnn.pack_padded_sequence(
                mels, torch.from_numpy(n), batch_first=True, enforce_sorted=False
            )
            _, (hidden, _) = self.lstm(packed)
            raw = torch.relu(self.linear(hidden[-1]))
            out[first : first + batch] = nn.functional.normalize(raw, dim=1).numpy()
        return out

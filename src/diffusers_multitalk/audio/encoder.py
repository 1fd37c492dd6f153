"""wav2vec2 audio features for MultiTalk, and the per-frame audio windows the DiT consumes.

MultiTalk drives each video frame with the hidden states of every encoder layer of a wav2vec2 base model
(TencentGameMate/chinese-wav2vec2-base: 12 layers x 768 channels). The convolutional features are
resampled in time to the video frame rate *before* the transformer encoder, so that each encoder step
corresponds to one video frame:

    input_values -> conv feature encoder -> linear interpolation (align_corners=True) to the number of video
    frames -> feature projection -> positional conv embedding -> encoder layers (each layer's output kept)

The result is ``[frames, num_layers, hidden]``. For generation every video frame ``i`` looks at a window of
embedding frames ``i-2 .. i+2`` (clamped to the available frames), see :func:`audio_windows`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..utils.devices import input_device
from .processing import TARGET_SAMPLE_RATE


__all__ = [
    "MultiTalkAudioEncoder",
    "encode_speech",
    "audio_windows",
    "mirror_pad_embedding",
    "WAV2VEC_DOWNLOAD_HINT",
]

WAV2VEC_DOWNLOAD_HINT = (
    "Download it with `huggingface-cli download TencentGameMate/chinese-wav2vec2-base --local-dir {dir}` and "
    "`huggingface-cli download TencentGameMate/chinese-wav2vec2-base model.safetensors --revision refs/pr/1 "
    "--local-dir {dir}` (the safetensors weights live only in that revision)."
)

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module):
    """Temporarily switch off dropout / layer drop / SpecAugment without changing the caller's mode for good."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        if was_training:
            module.train()


def _as_speech_array(speech) -> np.ndarray:
    if isinstance(speech, torch.Tensor):
        speech = speech.detach().cpu().float().numpy()
    speech = np.asarray(speech)
    if speech.ndim == 2 and 1 in speech.shape:
        speech = speech.reshape(-1)
    if speech.ndim != 1:
        raise ValueError(
            f"speech_16k must be a 1-D mono 16 kHz waveform, got shape {tuple(speech.shape)}; use prepare_audio() first."
        )
    if speech.size == 0:
        raise ValueError("speech_16k is empty; pass a non-empty 16 kHz waveform.")
    if speech.dtype.kind != "f":
        raise ValueError(f"speech_16k must hold float samples, got dtype {speech.dtype}; use prepare_audio() first.")
    if not np.all(np.isfinite(speech)):
        raise ValueError("speech_16k contains NaN or infinite samples.")
    return speech


def encode_speech(model, feature_extractor, speech_16k, fps: float = 25) -> torch.Tensor:
    """Per-video-frame wav2vec2 features of a 16 kHz waveform.

    Args:
        model: a transformers ``Wav2Vec2Model``.
        feature_extractor: its ``Wav2Vec2FeatureExtractor`` (normalises the waveform to zero mean / unit variance).
        speech_16k: mono 16 kHz waveform (numpy array or tensor), e.g. from :func:`prepare_audio`.
        fps: video frame rate; the features get ``int(len(speech_16k) / 16000 * fps)`` time steps.

    Returns:
        ``torch.Tensor [frames, num_hidden_layers, hidden_size]`` in the model's dtype, on the device the model ran on.
    """
    speech = _as_speech_array(speech_16k)
    duration = len(speech) / TARGET_SAMPLE_RATE
    num_frames = int(duration * fps)
    if num_frames < 1:
        raise ValueError(
            f"The audio lasts {duration:.3f} s, shorter than one video frame at {fps} fps; pass a longer waveform."
        )

    input_values = feature_extractor(speech, sampling_rate=TARGET_SAMPLE_RATE).input_values
    input_values = torch.from_numpy(np.squeeze(np.asarray(input_values))).float()

    # Through the model's own forward, so that offloading hooks (model / sequential CPU offload, group offloading)
    # move the weights.
    input_values = input_values.to(device=input_device(model), dtype=next(model.parameters()).dtype).unsqueeze(0)

    def resample_to_video_frames(module, args, conv_features):  # [1, channels, steps] -> [1, channels, frames]
        return F.interpolate(conv_features, size=num_frames, mode="linear", align_corners=True)

    handle = model.feature_extractor.register_forward_hook(resample_to_video_frames)
    try:
        with torch.no_grad(), _eval_mode(model):
            outputs = model(input_values, output_hidden_states=True)
    finally:
        handle.remove()
    # hidden_states[0] is the embedding output; a pre-LN ("stable layer norm") encoder applies its final norm only
    # to last_hidden_state, which is what the last layer's entry must be.
    layer_outputs = list(outputs.hidden_states[1:])
    layer_outputs[-1] = outputs.last_hidden_state
    embedding = torch.stack(layer_outputs, dim=2).squeeze(0)  # [frames, layers, hidden]
    return embedding


def audio_windows(embedding: torch.Tensor, num_frames: int, start: int = 0, window: int = 5) -> torch.Tensor:
    """Per-video-frame windows of audio features, as MultiTalk feeds one generation chunk.

    For each video frame ``i`` in ``[start, start + num_frames)`` the embedding frames
    ``i - window // 2 .. i + window // 2`` are gathered; indices outside the embedding are clamped to
    ``[0, len(embedding) - 1]`` (the first / last frame repeats), exactly as the reference's generation loop.

    Args:
        embedding: ``[frames, ...]`` (normally ``[frames, layers, hidden]`` from :func:`encode_speech`).
        num_frames: number of video frames of the chunk.
        start: index of the chunk's first video frame in the embedding.
        window: odd window size (5 in MultiTalk).

    Returns:
        ``[num_frames, window, *embedding.shape[1:]]``.

    Note: for the last chunk of a long video the reference first extends the embedding with a mirrored copy of
    its tail; see :func:`mirror_pad_embedding`.
    """
    if not isinstance(embedding, torch.Tensor):
        embedding = torch.as_tensor(np.asarray(embedding))
    if embedding.ndim < 1 or embedding.shape[0] == 0:
        raise ValueError("audio_windows needs a non-empty embedding [frames, ...].")
    if int(num_frames) < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}.")
    if int(window) < 1 or int(window) % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}.")
    half = int(window) // 2
    centers = torch.arange(int(start), int(start) + int(num_frames), device=embedding.device)
    offsets = torch.arange(int(window), device=embedding.device) - half
    indices = (centers[:, None] + offsets[None, :]).clamp(0, embedding.shape[0] - 1)
    return embedding[indices]


def mirror_pad_embedding(embedding: torch.Tensor, end: int) -> torch.Tensor:
    """Extend an embedding past its end the way the reference does before its last long-video chunk.

    When a chunk would end at video frame ``end >= len(embedding)``, the reference appends the last
    ``end - len(embedding) + 3`` frames in reverse order (a mirror of the tail) so that the final chunk is
    driven by plausible audio; the frames generated from the padding are cut off afterwards. Returns the
    embedding unchanged when ``end < len(embedding)``.
    """
    length = embedding.shape[0]
    if end < length:
        return embedding
    missing = end - length + 3
    tail = embedding[-missing:]
    return torch.cat([embedding, torch.flip(tail, dims=[0])], dim=0)


class MultiTalkAudioEncoder:
    """A wav2vec2 model and its feature extractor, turning 16 kHz speech into MultiTalk audio embeddings.

    Attributes:
        model: ``transformers.Wav2Vec2Model``.
        feature_extractor: ``transformers.Wav2Vec2FeatureExtractor``.
    """

    def __init__(self, model, feature_extractor):
        self.model = model
        self.feature_extractor = feature_extractor

    @classmethod
    def from_pretrained(
        cls,
        wav2vec_dir: Union[str, os.PathLike],
        torch_dtype: Optional[torch.dtype] = None,
        device: Optional[Union[str, torch.device]] = None,
    ) -> MultiTalkAudioEncoder:
        """Load from a local folder in the Hugging Face layout of TencentGameMate/chinese-wav2vec2-base
        (``config.json``, ``preprocessor_config.json`` and ``model.safetensors`` or ``pytorch_model.bin``)."""
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

        folder = Path(os.fspath(wav2vec_dir)).expanduser()
        hint = WAV2VEC_DOWNLOAD_HINT.format(dir=str(folder))
        if not folder.is_dir():
            raise FileNotFoundError(f"wav2vec2 folder '{folder}' does not exist. {hint}")
        missing = [name for name in ("config.json", "preprocessor_config.json") if not (folder / name).is_file()]
        if not any((folder / name).is_file() for name in _WEIGHT_FILES):
            missing.append("model.safetensors")
        if missing:
            raise FileNotFoundError(f"wav2vec2 folder '{folder}' lacks {', '.join(missing)}. {hint}")

        try:
            model = Wav2Vec2Model.from_pretrained(str(folder), local_files_only=True)
            feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            raise ValueError(
                f"Could not load the wav2vec2 model from '{folder}' ({type(exc).__name__}: {exc}). {hint}"
            ) from exc

        model.eval()
        model.requires_grad_(False)
        if torch_dtype is not None or device is not None:
            model.to(device=device, dtype=torch_dtype)
        return cls(model, feature_extractor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device=None, dtype=None) -> MultiTalkAudioEncoder:
        self.model.to(device=device, dtype=dtype)
        return self

    def embed(self, speech_16k, fps: float = 25) -> torch.Tensor:
        """``[frames, num_layers, hidden]`` features of a 16 kHz waveform, one step per video frame."""
        return encode_speech(self.model, self.feature_extractor, speech_16k, fps=fps)

    __call__ = embed

    def __repr__(self) -> str:
        cfg = self.model.config
        return (
            f"{type(self).__name__}(layers={cfg.num_hidden_layers}, hidden={cfg.hidden_size}, "
            f"device={self.device}, dtype={self.dtype})"
        )

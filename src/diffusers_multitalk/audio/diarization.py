"""Speaker diarization of one mixed recording (1-4 speakers) and the per-person tracks MultiTalk is driven by.

:func:`diarize` answers "who speaks when": a list of :class:`Turn` (start, end in seconds, speaker numbered 1, 2, ...
in the order the speakers are first heard). :func:`person_tracks` turns that into one waveform per person, each as
long as the recording and silent wherever that person does not speak (overlapping speech goes to both), which is the
``cond_audio`` layout the pipelines take. :func:`diarization_error_rate` scores turns against a
reference.

Two diarizers:

* ``"embedded"`` (default, offline, CPU): Silero VAD for voice activity, resemblyzer's voice encoder for speaker
  embeddings of 1.6 s windows of speech, and clustering of the embeddings (agglomerative, cosine, average linkage;
  the number of speakers from the cluster similarities when not given). Both networks' weights ship in their PyPI
  wheels (``pip install "diffusers-multitalk[conversation]"``); see :mod:`.speaker_models`.
* ``"pyannote"``: pyannote.audio's speaker-diarization pipeline, stronger on real recordings, where the user has
  pyannote.audio installed and the pipeline downloaded (it is gated on the Hugging Face hub).

The recording is processed in blocks (VAD, mel frames, embedding batches) and at most ``MAX_CLUSTERED`` embeddings
are clustered (the rest are assigned to the nearest centroid), so memory beyond the waveform itself stays flat in the
recording's length.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Union

import numpy as np


logger = logging.getLogger(__name__)

__all__ = [
    "DiarizationScore",
    "Diarization",
    "Turn",
    "PYANNOTE_HINT",
    "diarization_error_rate",
    "diarize",
    "person_tracks",
]

SAMPLE_RATE = 16000
FRAME = 0.01  # seconds: the 10 ms frame grid of activity, windows and scoring
MAX_SPEAKERS = 4
MAX_CLUSTERED = 1200  # embeddings clustered at most (the similarity matrix is quadratic in them)
DIARIZERS = ("embedded", "pyannote")
PYANNOTE_DEFAULT_PIPELINE = "pyannote/speaker-diarization-3.1"
PYANNOTE_HINT = (
    "pip install pyannote.audio, accept the conditions of the gated models pyannote/speaker-diarization-3.1 and "
    "pyannote/segmentation-3.0 on the Hugging Face hub, then download the pipeline (huggingface-cli download "
    "pyannote/speaker-diarization-3.1 with HF_TOKEN set) or pass pyannote_pipeline=<local folder or config.yaml>"
)


@dataclass(frozen=True)
class Turn:
    """One stretch of speech: ``start`` and ``end`` in seconds, ``speaker`` numbered from 1."""

    start: float
    end: float
    speaker: int


@dataclass
class Diarization:
    """The turns of a recording (sorted by start), its number of speakers and its length in seconds."""

    turns: List[Turn]
    num_speakers: int
    duration: float
    diarizer: str = "embedded"
    details: Dict[str, object] = field(default_factory=dict)

    def to_json(self) -> List[Dict[str, float]]:
        """The turns as ``[{"start": s, "end": s, "speaker": n}, ...]`` (seconds rounded to milliseconds)."""
        return [{"start": round(t.start, 3), "end": round(t.end, 3), "speaker": t.speaker} for t in self.turns]

    def speaking_time(self) -> List[float]:
        """Seconds of speech of each speaker (1..N)."""
        totals = [0.0] * self.num_speakers
        for turn in self.turns:
            totals[turn.speaker - 1] += turn.end - turn.start
        return totals

    def activity(self, frame: float = FRAME) -> np.ndarray:
        """Boolean ``[num_speakers, frames]``: who speaks in each ``frame``-second frame of the recording."""
        return _activity(self.turns, self.num_speakers, int(np.ceil(self.duration / frame)), frame)


def _activity(turns: Sequence[Turn], num_speakers: int, frames: int, frame: float) -> np.ndarray:
    out = np.zeros((num_speakers, frames), dtype=bool)
    for turn in turns:
        out[turn.speaker - 1, int(round(turn.start / frame)) : int(round(turn.end / frame))] = True
    return out


# --------------------------------------------------------------------------------------------------------------------
# turns <-> frame labels
# --------------------------------------------------------------------------------------------------------------------


def _runs(values: np.ndarray):
    """``(start, stop, value)`` of each run of equal values of a 1-D array."""
    if len(values) == 0:
        return []
    edges = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], edges])
    stops = np.concatenate([edges, [len(values)]])
    return [(int(a), int(b), values[a]) for a, b in zip(starts, stops)]


def _labels_to_turns(labels: np.ndarray, max_gap: float) -> List[Turn]:
    """Turns from per-frame labels (-1 = no speech, k = speaker k + 1), a speaker's turns that are less than
    ``max_gap`` seconds apart joined into one (breaths and pauses within a turn)."""
    turns: List[Turn] = []
    last_end: Dict[int, int] = {}
    for start, stop, value in _runs(labels):
        if value < 0:
            continue
        speaker = int(value) + 1
        previous = last_end.get(speaker)
        if previous is not None and turns and (start - previous) * FRAME < max_gap:
            # join with the speaker's previous turn if no other speaker spoke in between
            index = max(i for i, t in enumerate(turns) if t.speaker == speaker)
            if index == len(turns) - 1:
                turns[index] = Turn(turns[index].start, stop * FRAME, speaker)
                last_end[speaker] = stop
                continue
        turns.append(Turn(start * FRAME, stop * FRAME, speaker))
        last_end[speaker] = stop
    return turns


def _number_by_first_turn(turns: Sequence[Turn]) -> List[Turn]:
    """Renumber speakers 1, 2, ... in the order they are first heard."""
    order: Dict[int, int] = {}
    for turn in sorted(turns, key=lambda t: (t.start, t.end)):
        order.setdefault(turn.speaker, len(order) + 1)
    return sorted((Turn(t.start, t.end, order[t.speaker]) for t in turns), key=lambda t: (t.start, t.speaker))


# --------------------------------------------------------------------------------------------------------------------
# the embedded diarizer: voice activity -> embeddings of speech windows -> clustering -> frame labels
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedOptions:
    """Settings of the embedded diarizer (the defaults are the benchmarked ones, see docs/conversation.md)."""

    onset: float = 0.5  # VAD probability that starts speech
    offset: float = 0.35  # ... and that ends it (hysteresis)
    min_speech: float = 0.25  # seconds: shorter bursts are dropped
    min_silence: float = 0.1  # seconds: shorter pauses are bridged
    speech_pad: float = 0.0  # seconds added on both sides of speech
    window: float = 1.6  # seconds of speech per embedding (the encoder's training length)
    hop: float = 0.4  # seconds between windows
    same_speaker: float = 0.88  # mean d-vectors more similar than this are one speaker (estimating the count) ...
    same_voice: float = 0.95  # ... unless their median pitches differ by pitch_gap: then this
    pitch_gap: float = 0.075  # log-F0 (7.8%, 1.3 semitones)
    min_share: float = 0.04  # a cluster with less of the speech is not a speaker of its own ...
    min_speaker: float = 5.0  # ... nor one with fewer seconds of speech (when estimating the count)
    max_gap: float = 0.3  # seconds: a speaker's turns closer than this are joined
    cepstral_weight: float = 0.5  # weight of the cepstral statistics beside the d-vector (0: d-vector only)
    pitch_weight: float = 0.5  # weight of the median log-F0
    voiced: float = 0.5  # autocorrelation peak above which a frame counts as voiced
    threads: int = 1  # torch threads for the two networks (see speaker_models.torch_cpu_settings)


@lru_cache(maxsize=1)
def _embedded_models():
    from .speaker_models import SileroVAD, VoiceEncoder

    return SileroVAD.from_package(), VoiceEncoder.from_package()


def _speech_mask(probs: np.ndarray, frames: int, options: EmbeddedOptions) -> np.ndarray:
    """Per 10 ms frame: speech or not, from the VAD's 32 ms chunk probabilities (hysteresis, then short pauses
    bridged, short bursts dropped, padding)."""
    from .speaker_models import VAD_CHUNK

    chunk_of_frame = np.minimum((np.arange(frames) * 160) // VAD_CHUNK, len(probs) - 1)
    p = probs[chunk_of_frame]
    speech = np.zeros(frames, dtype=bool)
    active = False
    for start, stop, above in _runs(np.where(p >= options.onset, 1, np.where(p < options.offset, -1, 0))):
        if above == 1:
            active = True
        elif above == -1:
            active = False
        speech[start:stop] = active
    runs = _runs(speech.astype(np.int8))
    for start, stop, value in runs:  # bridge short pauses inside speech
        if value == 0 and 0 < start and stop < frames and (stop - start) * FRAME < options.min_silence:
            speech[start:stop] = True
    for start, stop, value in _runs(speech.astype(np.int8)):  # drop short bursts
        if value == 1 and (stop - start) * FRAME < options.min_speech:
            speech[start:stop] = False
    pad = int(round(options.speech_pad / FRAME))
    if pad:
        padded = speech.copy()
        for start, stop, value in _runs(speech.astype(np.int8)):
            if value == 1:
                padded[max(0, start - pad) : stop + pad] = True
        speech = padded
    return speech


def _frame_pitch(wave: np.ndarray, frames: np.ndarray):
    """Log-F0 and voicing strength of the given 10 ms frames: normalised autocorrelation of a 40 ms window (at
    8 kHz) centred on each frame, its highest peak between 60 and 400 Hz. Cheap (two FFTs a frame) and plain:
    the per-window median is all that is used."""
    from scipy.signal import resample_poly

    if len(frames) == 0:
        return np.zeros(0), np.zeros(0)
    lo, hi = int(frames.min()) * 160 - 320, (int(frames.max()) + 1) * 160 + 320
    segment = np.zeros(hi - lo, dtype=np.float32)
    a, b = max(lo, 0), min(hi, len(wave))
    segment[a - lo : b - lo] = wave[a:b]
    narrow = resample_poly(segment, 1, 2).astype(np.float32)  # 8 kHz
    centres = (frames * 160 + 80 - lo) // 2
    taps = np.arange(-160, 160)
    windows = narrow[np.clip(centres[:, None] + taps, 0, len(narrow) - 1)] * np.hanning(320).astype(np.float32)
    spectrum = np.fft.rfft(windows - windows.mean(1, keepdims=True), n=1024)
    corr = np.fft.irfft(np.abs(spectrum) ** 2, n=1024)[:, :160]
    corr = corr / np.maximum(corr[:, :1], 1e-10) / np.maximum(1 - np.arange(160) / 320, 0.5)  # window taper
    lags = np.arange(20, 134)  # 400 .. 60 Hz at 8 kHz
    best = corr[:, lags].argmax(1)
    return np.log(8000.0 / lags[best]), corr[np.arange(len(frames)), lags[best]]


def _speech_features(wave: np.ndarray, speech: np.ndarray, encoder, block: int = 6000):
    """Mel frames, frame powers, log-F0 and voicing of the speech frames only (the encoder sees speech with the
    pauses cut out, as resemblyzer trims long silences), block by block (60 s) so the full spectrogram never
    exists."""
    mels, powers, pitch, voicing = [], [], [], []
    for first in range(0, len(speech), block):
        stop = min(first + block, len(speech))
        keep = speech[first:stop]
        if not keep.any():
            continue
        mels.append(encoder.mel_frames(wave, first, stop)[keep])
        powers.append(encoder.frame_power(wave, first, stop)[keep])
        f0, strength = _frame_pitch(wave, first + np.flatnonzero(keep))
        pitch.append(f0)
        voicing.append(strength)
    if not mels:
        return np.zeros((0, 40), np.float32), np.zeros(0), np.zeros(0), np.zeros(0)
    return np.concatenate(mels), np.concatenate(powers), np.concatenate(pitch), np.concatenate(voicing)


def _window_pitch(pitch, voicing, starts, lengths, options) -> np.ndarray:
    """Median log-F0 of each window's voiced frames (the recording's median for windows with fewer than 3)."""
    f0 = []
    for start, length in zip(starts, lengths):
        voiced = voicing[start : start + length] > options.voiced
        f0.append(np.median(pitch[start : start + length][voiced]) if voiced.sum() >= 3 else np.nan)
    f0 = np.asarray(f0, dtype=float)
    return np.where(np.isnan(f0), np.nanmedian(f0) if np.isfinite(f0).any() else 0.0, f0)


def _voice_statistics(mel, f0, starts, lengths, options) -> np.ndarray:
    """Classic voice statistics of each window, to sit beside the d-vectors: mean and spread of 19 cepstral
    coefficients (timbre) and the window's median log-F0 (pitch), each standardised over the recording and weighted
    by ``options.cepstral_weight`` / ``options.pitch_weight``. They separate same-gender voices the d-vector puts
    close together (measured on espeak-ng voices, docs/conversation.md)."""
    from scipy.fft import dct

    cep = dct(np.log(mel + 1e-6), type=2, norm="ortho", axis=1)[:, 1:20]
    rows = np.asarray(
        [np.concatenate([cep[s : s + n].mean(0), cep[s : s + n].std(0)]) for s, n in zip(starts, lengths)]
    )
    rows = (rows - rows.mean(0)) / (rows.std(0) + 1e-6) / np.sqrt(rows.shape[1])
    pitch = (f0 - f0.mean()) / (f0.std() + 1e-6)
    return np.hstack([options.cepstral_weight * rows, options.pitch_weight * pitch[:, None]])


def _speech_windows(speech: np.ndarray, length: int, hop: int):
    """Embedding windows on the speech-only timeline (speech frames concatenated) that stay inside one stretch of
    speech between pauses, so a window rarely spans two speakers' turns: ``(starts, lengths)`` in speech frames.
    A stretch no longer than ``length`` frames is one window; a longer one has windows every ``hop`` frames, the
    last ending at its end."""
    starts, lengths, offset = [], [], 0
    for start, stop, value in _runs(speech.astype(np.int8)):
        if value == 0:
            continue
        count = stop - start
        if count <= length:
            starts.append(offset)
            lengths.append(count)
        else:
            local = np.arange(0, count - length + 1, hop)
            if local[-1] != count - length:
                local = np.append(local, count - length)
            starts.extend((offset + local).tolist())
            lengths.extend([length] * len(local))
        offset += count
    return np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


def _spectral_labels(similarity: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Spectral clustering of a cosine-similarity matrix into ``k`` groups (negative similarities cut to 0)."""
    from sklearn.cluster import SpectralClustering

    affinity = np.clip(similarity, 0.0, 1.0)
    clustering = SpectralClustering(k, affinity="precomputed", random_state=seed, assign_labels="cluster_qr")
    return clustering.fit_predict(affinity)


def _centroids(embeddings: np.ndarray, labels: np.ndarray, k: int, weights: np.ndarray) -> np.ndarray:
    out = np.stack([(embeddings[labels == c] * weights[labels == c, None]).sum(0) for c in range(k)])
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-8)


def _refine(embeddings: np.ndarray, centroids: np.ndarray, weights: np.ndarray, rounds: int = 10) -> np.ndarray:
    """Spherical k-means from ``centroids``: windows to their most similar centroid, centroids re-estimated."""
    for _ in range(rounds):
        labels = (embeddings @ centroids.T).argmax(1)
        present = np.unique(labels)
        if len(present) < len(centroids):  # a centroid lost all its windows: keep the survivors
            centroids = centroids[present]
            continue
        updated = _centroids(embeddings, labels, len(centroids), weights)
        if np.allclose(updated, centroids, atol=1e-5):
            break
        centroids = updated
    return centroids


def _distinct(dvectors, f0, labels: np.ndarray, k: int, weights: np.ndarray, speech: float, options) -> bool:
    """Whether ``k`` clusters are ``k`` speakers: each holds at least ``options.min_share`` of the speech and
    ``options.min_speaker`` seconds of it (``speech`` seconds in all; a mean of a few windows is too noisy a voice
    print to tell a new voice from a split one), and every
    pair's mean d-vectors (the encoder's voice prints, comparable across recordings, unlike the standardised
    statistics) are less similar than ``options.same_speaker``, or than ``options.same_voice`` with median pitches
    ``options.pitch_gap`` (log) apart."""
    share = np.bincount(labels, weights=weights, minlength=k)
    if (share < options.min_share * share.sum()).any() or (share / share.sum() * speech < options.min_speaker).any():
        return False
    prints = _centroids(dvectors, labels, k, weights)
    similar = prints @ prints.T
    pitch = np.array([np.median(f0[labels == c]) for c in range(k)])
    for a in range(k):
        for b in range(a + 1, k):
            apart = abs(pitch[a] - pitch[b]) >= options.pitch_gap
            if similar[a, b] >= (options.same_voice if apart else options.same_speaker):
                return False
    return True


def _best_partition(features, weights, pick, similarity, k: int) -> np.ndarray:
    """Centroids of ``k`` clusters: spectral clustering and agglomerative clustering (average linkage) of the
    subsample, each refined by spherical k-means over all windows; the one whose windows sit closest to their
    centroids wins (spectral clustering alone now and then merged two voices and split a third)."""
    from sklearn.cluster import AgglomerativeClustering

    agglomerative = AgglomerativeClustering(k, metric="precomputed", linkage="average")
    best, best_fit = None, -np.inf
    for labels in (_spectral_labels(similarity, k), agglomerative.fit_predict(1.0 - similarity)):
        centroids = _refine(features, _centroids(features[pick], labels, k, weights[pick]), weights)
        fit = float(((features @ centroids.T).max(1) * weights).sum())
        if len(centroids) == k and fit > best_fit or best is None:
            best, best_fit = centroids, fit
    return best


def _cluster(features, dvectors, f0, weights, num_speakers, max_speakers: int, speech: float, options) -> np.ndarray:
    """Speaker centroids ``[K, D]`` of window ``features``. With ``num_speakers`` given, K = num_speakers; otherwise
    the largest K <= ``max_speakers`` whose clusters are distinct speakers (:func:`_distinct`), else 1."""
    n = len(features)
    if n == 0:
        raise ValueError("no speech to cluster")
    if num_speakers == 1 or n < 2:
        return _centroids(features, np.zeros(n, dtype=int), 1, weights)
    # cluster an even subsample at most MAX_CLUSTERED long (the affinity is quadratic); _refine sees every window
    pick = np.linspace(0, n - 1, min(n, MAX_CLUSTERED)).round().astype(int)
    similarity = features[pick] @ features[pick].T
    for k in [num_speakers] if num_speakers else range(min(max_speakers, n), 1, -1):
        centroids = _best_partition(features, weights, pick, similarity, k)
        if num_speakers:
            return centroids
        labels = (features @ centroids.T).argmax(1)
        if len(centroids) == k and _distinct(dvectors, f0, labels, k, weights, speech, options):
            return centroids
    return _centroids(features, np.zeros(n, dtype=int), 1, weights)


def _frame_scores(similarity: np.ndarray, starts: np.ndarray, lengths: np.ndarray, count: int) -> np.ndarray:
    """Per speech frame, the similarity to each centroid averaged over the windows covering it, each weighted by a
    triangle peaking at its middle (a frame near a window's edge says little about it): ``[count, K]``."""
    total = np.zeros((count, similarity.shape[1]))
    weight = np.zeros(count)
    for (start, length), sims in zip(zip(starts, lengths), similarity):
        position = np.arange(length) + 0.5
        tri = 1.0 - np.abs(position - length / 2) / (length / 2) + 1e-3
        total[start : start + length] += tri[:, None] * sims[None, :]
        weight[start : start + length] += tri
    return total / np.maximum(weight, 1e-8)[:, None]


def _embedded(wave: np.ndarray, num_speakers: Optional[int], max_speakers: int, options: EmbeddedOptions):
    """The embedded diarizer on a 16 kHz waveform: ``(turns, details)``."""
    from .speaker_models import torch_cpu_settings

    vad, encoder = _embedded_models()
    frames = int(np.ceil(len(wave) / 160))
    with torch_cpu_settings(options.threads):
        probabilities = vad.probabilities(wave)
    speech = _speech_mask(probabilities, frames, options)
    details: Dict[str, object] = {"speech_seconds": round(float(speech.sum()) * FRAME, 2)}
    if speech.sum() < int(options.min_speech / FRAME):
        return [], details
    mel, power, pitch, voicing = _speech_features(wave, speech, encoder)
    starts, lengths = _speech_windows(speech, int(options.window / FRAME), int(options.hop / FRAME))
    with torch_cpu_settings(options.threads):
        dvectors = encoder.embed(mel, power, starts, lengths)
    f0 = _window_pitch(pitch, voicing, starts, lengths, options)
    features = dvectors
    if options.cepstral_weight or options.pitch_weight:
        features = np.hstack([dvectors, _voice_statistics(mel, f0, starts, lengths, options)])
        features /= np.linalg.norm(features, axis=1, keepdims=True)
    # short windows (a word or two) are noisy voice prints: they are assigned, but do not shape the clusters
    reliable = lengths >= min(int(options.window / FRAME) // 2, int(lengths.max()))
    weights = lengths[reliable].astype(float)
    centroids = _cluster(
        features[reliable],
        dvectors[reliable],
        f0[reliable],
        weights,
        num_speakers,
        max_speakers,
        len(mel) * FRAME,
        options,
    )
    scores = _frame_scores(features @ centroids.T, starts, lengths, len(mel))
    labels = np.full(frames, -1)
    labels[speech] = scores.argmax(1)
    details.update(windows=int(len(starts)), clustered=int(reliable.sum()), speakers=int(len(centroids)))
    return _labels_to_turns(labels, options.max_gap), details


# --------------------------------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiarizationScore:
    """Diarization error rate and its parts, in seconds of (speaker, frame) pairs; ``mapping`` maps hypothesis
    speakers to the reference speakers they were scored as."""

    der: float
    missed: float
    false_alarm: float
    confusion: float
    speech: float
    mapping: Dict[object, object]

    def as_dict(self) -> Dict[str, object]:
        out = asdict(self)
        out["mapping"] = {str(k): v for k, v in self.mapping.items()}
        return out


def _as_turns(turns) -> List[Turn]:
    if isinstance(turns, Diarization):
        return list(turns.turns)
    out = []
    for turn in turns:
        if isinstance(turn, Turn):
            out.append(turn)
        elif isinstance(turn, dict):
            out.append(Turn(float(turn["start"]), float(turn["end"]), turn["speaker"]))
        else:
            start, end, speaker = turn
            out.append(Turn(float(start), float(end), speaker))
    return out


def _label_activity(turns: Sequence[Turn], frames: int, frame: float):
    labels = sorted({t.speaker for t in turns}, key=str)
    index = {label: i for i, label in enumerate(labels)}
    activity = np.zeros((len(labels), frames), dtype=bool)
    for t in turns:
        activity[index[t.speaker], int(round(t.start / frame)) : int(round(t.end / frame))] = True
    return labels, activity


def diarization_error_rate(reference, hypothesis, duration: Optional[float] = None, frame: float = FRAME):
    """Diarization error rate of ``hypothesis`` against ``reference`` (each a :class:`Diarization` or a list of
    :class:`Turn`, ``{"start", "end", "speaker"}`` dicts or ``(start, end, speaker)`` tuples; labels need not match).

    On ``frame``-second frames, no collar, overlapping speech scored: missed = reference speakers beyond the
    hypothesis' count in a frame, false alarm = the reverse, confusion = the rest of the reference speakers not
    matched by their mapped hypothesis speaker; speakers are mapped one to one for the most matched frames (Hungarian
    assignment). DER = (missed + false alarm + confusion) / reference speech; 0 when both are empty."""
    from scipy.optimize import linear_sum_assignment

    ref, hyp = _as_turns(reference), _as_turns(hypothesis)
    end = max([duration or 0.0] + [t.end for t in ref + hyp])
    frames = int(np.ceil(end / frame)) + 1
    ref_labels, r = _label_activity(ref, frames, frame)
    hyp_labels, h = _label_activity(hyp, frames, frame)
    overlap = r.astype(np.int64) @ h.T.astype(np.int64)  # [ref, hyp] frames both speak
    rows, cols = linear_sum_assignment(-overlap) if overlap.size else ((), ())
    correct = sum(int(overlap[i, j]) for i, j in zip(rows, cols))
    n_ref, n_hyp = r.sum(0), h.sum(0)
    missed = int(np.maximum(n_ref - n_hyp, 0).sum())
    false_alarm = int(np.maximum(n_hyp - n_ref, 0).sum())
    confusion = int(np.minimum(n_ref, n_hyp).sum()) - correct
    speech = int(n_ref.sum())
    errors = missed + false_alarm + confusion
    der = errors / speech if speech else (0.0 if errors == 0 else float("inf"))
    mapping = {hyp_labels[j]: ref_labels[i] for i, j in zip(rows, cols) if overlap[i, j] > 0}
    return DiarizationScore(der, missed * frame, false_alarm * frame, confusion * frame, speech * frame, mapping)


# --------------------------------------------------------------------------------------------------------------------
# pyannote
# --------------------------------------------------------------------------------------------------------------------


def _pyannote_pipeline(source: Optional[Union[str, os.PathLike]], token: Optional[str]):
    try:
        from pyannote.audio import Pipeline
    except ImportError as exc:
        raise ImportError(
            f'diarizer="pyannote" needs pyannote.audio, which is not installed: {PYANNOTE_HINT}.'
        ) from exc
    source = os.fspath(source) if source is not None else PYANNOTE_DEFAULT_PIPELINE
    token = token or os.environ.get("HF_TOKEN")
    try:
        try:
            pipeline = Pipeline.from_pretrained(source, token=token)
        except TypeError:  # pyannote.audio 3.x names it use_auth_token
            pipeline = Pipeline.from_pretrained(source, use_auth_token=token)
    except Exception as exc:
        raise RuntimeError(
            f"Could not load the pyannote pipeline {source!r} ({type(exc).__name__}: {exc}); {PYANNOTE_HINT}."
        ) from exc
    if pipeline is None:  # 3.x returns None for a gated model it may not download
        raise RuntimeError(
            f"Could not load the pyannote pipeline {source!r} (gated or not downloaded); {PYANNOTE_HINT}."
        )
    return pipeline


def _pyannote(wave: np.ndarray, num_speakers: Optional[int], max_speakers: int, source, token):
    """pyannote.audio's pipeline on a 16 kHz waveform: ``(turns, details)``."""
    import torch

    pipeline = _pyannote_pipeline(source, token)
    limits = {"num_speakers": num_speakers} if num_speakers else {"min_speakers": 1, "max_speakers": max_speakers}
    output = pipeline({"waveform": torch.from_numpy(wave)[None], "sample_rate": SAMPLE_RATE}, **limits)
    # pyannote.audio 4 returns an object holding the annotation; 3.x the annotation itself
    annotation = getattr(output, "speaker_diarization", output)
    labels: Dict[object, int] = {}
    turns = []
    for segment, _, label in annotation.itertracks(yield_label=True):
        speaker = labels.setdefault(label, len(labels))
        turns.append(Turn(float(segment.start), float(segment.end), speaker + 1))
    return turns, {"pipeline": os.fspath(source) if source is not None else PYANNOTE_DEFAULT_PIPELINE}


# --------------------------------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------------------------------


def _load(audio, sample_rate: Optional[int]) -> np.ndarray:
    from .processing import prepare_audio

    return prepare_audio(audio, sampling_rate=sample_rate, normalize_loudness=False)


def diarize(
    audio,
    num_speakers: Optional[int] = None,
    *,
    sample_rate: Optional[int] = None,
    diarizer: str = "embedded",
    max_speakers: int = MAX_SPEAKERS,
    pyannote_pipeline: Optional[Union[str, os.PathLike]] = None,
    pyannote_token: Optional[str] = None,
    options: Optional[EmbeddedOptions] = None,
) -> Diarization:
    """Who speaks when in one mixed recording.

    Args:
        audio: a path (any format :func:`~.processing.load_audio_file` reads, video containers too) or a waveform
            (numpy / torch, with ``sample_rate``).
        num_speakers: the number of speakers (1-4) if known; estimated (1..``max_speakers``) otherwise.
        diarizer: ``"embedded"`` (offline, weights from the silero-vad and resemblyzer wheels) or ``"pyannote"``
            (pyannote.audio's pipeline; ``pyannote_pipeline`` a hub id or a local folder / config.yaml, default
            pyannote/speaker-diarization-3.1; ``pyannote_token`` or ``HF_TOKEN`` for the gated download).
        options: settings of the embedded diarizer.

    Returns:
        a :class:`Diarization`: turns sorted by start, speakers numbered 1..N in the order they are first heard.
    """
    if diarizer not in DIARIZERS:
        raise ValueError(f"diarizer must be one of {DIARIZERS}, got {diarizer!r}")
    for name, value in (("num_speakers", num_speakers), ("max_speakers", max_speakers)):
        if value is not None and (isinstance(value, bool) or int(value) != value or not 1 <= value <= MAX_SPEAKERS):
            raise ValueError(f"{name} must be a whole number from 1 to {MAX_SPEAKERS}, got {value!r}")
    wave = _load(audio, sample_rate)
    duration = len(wave) / SAMPLE_RATE
    if diarizer == "pyannote":
        turns, details = _pyannote(wave, num_speakers, int(max_speakers), pyannote_pipeline, pyannote_token)
    else:
        turns, details = _embedded(wave, num_speakers, int(max_speakers), options or EmbeddedOptions())
    turns = _number_by_first_turn(turns)
    found = max((t.speaker for t in turns), default=0)
    if num_speakers and found < num_speakers:
        logger.warning("diarization: %d speakers asked for, only %d heard speaking", num_speakers, found)
    return Diarization(turns, max(found, int(num_speakers or 0)), duration, diarizer, details)


def person_tracks(audio, diarization: Diarization, *, sample_rate: Optional[int] = None, fade: float = 0.01):
    """One waveform per person (16 kHz float32, each as long as the recording): the recording where that person
    speaks, silence elsewhere. Speech two persons overlap on goes to both. ``fade`` seconds of raised-cosine ramp at
    each turn's edges (inside the turn) avoid clicks."""
    wave = audio if isinstance(audio, np.ndarray) and sample_rate in (None, SAMPLE_RATE) else _load(audio, sample_rate)
    wave = np.asarray(wave, dtype=np.float32)
    ramp_len = max(1, int(round(fade * SAMPLE_RATE)))
    ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp_len) + 0.5) / ramp_len)).astype(np.float32)
    tracks = []
    for speaker in range(1, diarization.num_speakers + 1):
        gain = np.zeros(len(wave), dtype=np.float32)
        for turn in diarization.turns:
            if turn.speaker != speaker:
                continue
            a, b = int(round(turn.start * SAMPLE_RATE)), min(len(wave), int(round(turn.end * SAMPLE_RATE)))
            if b <= a:
                continue
            piece = np.ones(b - a, dtype=np.float32)
            n = min(ramp_len, (b - a) // 2)
            if n:
                piece[:n], piece[-n:] = ramp[:n], ramp[:n][::-1]
            gain[a:b] = np.maximum(gain[a:b], piece)
        tracks.append(wave * gain)
    return tracks

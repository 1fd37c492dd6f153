"""Audio path of MultiTalk: waveform preparation, wav2vec2 embeddings and per-frame audio windows."""

from .encoder import (
    WAV2VEC_DOWNLOAD_HINT,
    MultiTalkAudioEncoder,
    audio_windows,
    encode_speech,
    mirror_pad_embedding,
)
from .processing import (
    TARGET_SAMPLE_RATE,
    VIDEO_EXTENSIONS,
    combine_speakers,
    load_audio_file,
    loudness_normalize,
    prepare_audio,
)
from .tts import (
    EspeakEngine,
    KokoroEngine,
    TTSResult,
    parse_dialogue,
    resolve_tts_engine,
    synthesize_dialogue,
    tts_from_json_block,
)


__all__ = [
    "TARGET_SAMPLE_RATE",
    "VIDEO_EXTENSIONS",
    "WAV2VEC_DOWNLOAD_HINT",
    "MultiTalkAudioEncoder",
    "audio_windows",
    "combine_speakers",
    "encode_speech",
    "load_audio_file",
    "loudness_normalize",
    "mirror_pad_embedding",
    "prepare_audio",
    # text-to-speech (audio/tts.py)
    "EspeakEngine",
    "KokoroEngine",
    "TTSResult",
    "parse_dialogue",
    "resolve_tts_engine",
    "synthesize_dialogue",
    "tts_from_json_block",
]

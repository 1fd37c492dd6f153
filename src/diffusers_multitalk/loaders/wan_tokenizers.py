"""The tokenizers of the official Wan2.1 folder (``google/umt5-xxl/``, ``xlm-roberta-large/``), loaded locally."""

from __future__ import annotations

import os
from pathlib import Path

from .original_folders import WAN_CLIP_TOKENIZER_DIR, WAN_UMT5_TOKENIZER_DIR
from .wan_checkpoint import _DOWNLOAD_HINT


__all__ = ["load_clip_tokenizer", "load_tokenizer", "load_umt5_tokenizer"]


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "sentencepiece.bpe.model")


def load_tokenizer(path: str | os.PathLike, **kwargs):
    """``AutoTokenizer.from_pretrained`` on a local folder, with a clear error if it is missing or empty."""
    from transformers import AutoTokenizer

    folder = Path(path).expanduser()
    if not folder.is_dir() or not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"Tokenizer folder not found or empty: '{folder}' (looked for one of {list(_TOKENIZER_FILES)}). "
            f"The Wan2.1 release ships its tokenizers in '<dir>/{WAN_UMT5_TOKENIZER_DIR}' and "
            f"'<dir>/{WAN_CLIP_TOKENIZER_DIR}'; download it with `{_DOWNLOAD_HINT}`."
        )
    kwargs.setdefault("local_files_only", True)
    return AutoTokenizer.from_pretrained(str(folder), **kwargs)


def _tokenizer_folder(folder: str | os.PathLike, subdir: str) -> Path:
    p = Path(folder).expanduser()
    return p / subdir if (p / subdir).is_dir() else p


def load_umt5_tokenizer(folder: str | os.PathLike, **kwargs):
    """The umT5 tokenizer: ``folder`` is ``<dir>/google/umt5-xxl`` or the Wan2.1 folder ``<dir>`` itself."""
    return load_tokenizer(_tokenizer_folder(folder, WAN_UMT5_TOKENIZER_DIR), **kwargs)


def load_clip_tokenizer(folder: str | os.PathLike, **kwargs):
    """The XLM-RoBERTa tokenizer of Wan's CLIP: ``<dir>/xlm-roberta-large`` or the Wan2.1 folder (unused by I2V)."""
    return load_tokenizer(_tokenizer_folder(folder, WAN_CLIP_TOKENIZER_DIR), **kwargs)

"""MultiTalk's and InfiniteTalk's defaults that several layers share (the pipelines and the runtime's options)."""

from __future__ import annotations

import random


# The timestep shift of each resolution table (the reference's --sample_shift defaults).
DEFAULT_SHIFT = {"multitalk-480": 7.0, "multitalk-720": 11.0, "infinitetalk-480": 7.0, "infinitetalk-720": 11.0}
# The reference draws a random seed in this range for a negative --base_seed.
MAX_RANDOM_SEED = 99_999_999


def random_seed() -> int:
    """A fresh seed, drawn as the reference does for a negative `--base_seed`."""
    return random.randint(0, MAX_RANDOM_SEED)

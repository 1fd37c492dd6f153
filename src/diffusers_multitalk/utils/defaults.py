"""Defaults that several layers share: the random seed (the pipelines and the runtime) and the TeaCache polynomials
(the hooks' defaults, and each size of the variant registry)."""

from __future__ import annotations

import random


# TeaCache's polynomial coefficients (highest power first), fitted by MultiTalk on its DiT for its retention-steps
# variant at 480P and 720P. Here, below both users: hooks/teacache.py keys its defaults by MultiTalk's sizes, the
# registry (variants.py) gives them to every size of a model with this DiT.
TEACACHE_COEFFICIENTS_480 = (2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01)
TEACACHE_COEFFICIENTS_720 = (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02)
# The reference draws a random seed in this range for a negative --base_seed.
MAX_RANDOM_SEED = 99_999_999


def random_seed() -> int:
    """A fresh seed, drawn as the reference does for a negative `--base_seed`."""
    return random.randint(0, MAX_RANDOM_SEED)

"""diffusers-multitalk: MultiTalk audio-driven (multi-person) talking video generation for diffusers."""

__version__ = "0.1.0.dev0"

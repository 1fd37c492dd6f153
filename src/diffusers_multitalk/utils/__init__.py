"""Helpers every layer may use: they import nothing else of the package."""

from .devices import input_device


__all__ = ["input_device"]

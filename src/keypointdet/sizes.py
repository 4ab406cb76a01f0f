"""Image sizes of the evaluation letterbox, in plain Python (shared by the torch-free runtime)."""

from __future__ import annotations


def round_up(value: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is at least ``value``."""
    return -(-value // multiple) * multiple


def letterbox_size(height: int, width: int, input_size: int) -> tuple[int, int]:
    """``(height, width)`` of an image whose long side is resized to ``input_size`` (sides rounded, at least 1)."""
    ratio = input_size / max(height, width)
    return max(1, round(height * ratio)), max(1, round(width * ratio))

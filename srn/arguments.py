"""Argument types shared by the ``srn`` sub-commands: a number is checked where it is parsed, with one error."""

from __future__ import annotations

import argparse
import math


def number(convert, accept, requirement: str):
    """An argparse ``type``: ``convert(text)`` when ``accept`` holds for it, else "must be <requirement>"."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}.")
        return value
    return parse


positive_int = number(int, lambda v: v >= 1, "a positive integer")
positive_float = number(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
non_negative_float = number(float, lambda v: v >= 0 and math.isfinite(v), "a number of seconds >= 0")

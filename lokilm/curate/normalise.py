"""Normalisation step: Unicode NFC and tidy whitespace, so later hashing and n-gram matching see one spelling."""

from __future__ import annotations

import re
import unicodedata

from datatrove.pipeline.formatters.base import BaseFormatter

_SPACES = re.compile(r"[^\S\n]+")  # runs of whitespace other than newlines (tabs, NBSP, ideographic spaces)
_TRAILING = re.compile(r" +\n")
_BLANK_LINES = re.compile(r"\n{3,}")


class Normalise(BaseFormatter):
    name = "normalise (Unicode, whitespace)"

    def __init__(self, form: str = "NFC"):
        super().__init__()
        self.form = form

    def format(self, text: str) -> str:
        text = unicodedata.normalize(self.form, text)
        text = _TRAILING.sub("\n", _SPACES.sub(" ", text))
        return _BLANK_LINES.sub("\n\n", text).strip()

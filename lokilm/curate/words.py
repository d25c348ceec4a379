"""Words and sentences as lokilm's curation counts them (datatrove's WordTokenizer interface, no NLTK data)."""

from __future__ import annotations

import re

from datatrove.utils.word_tokenizers import WordTokenizer

_WORD = re.compile(r"\S+")  # whitespace-separated, punctuation attached: the Gopher paper's notion of a word
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+")


class RegexWordTokenizer(WordTokenizer):
    """English words and sentences by regular expression.

    datatrove's default English tokenizer is NLTK's, which needs the punkt data downloaded at run time; these
    machines have no network, and the Gopher/C4 rules only need word and sentence counts. NLTK also splits
    punctuation into tokens of its own, which makes Gopher's "80% of words contain a letter" rule reject novels
    with much dialogue; whitespace-separated words are what the Gopher paper counts."""

    def __init__(self):
        super().__init__("en")

    def word_tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [text[a:b] for a, b in self.span_tokenize(text)]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, start = [], 0
        for m in _SENTENCE_END.finditer(text):
            spans.append((start, m.start()))
            start = m.end()
        if start < len(text):
            spans.append((start, len(text)))
        return spans

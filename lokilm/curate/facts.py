"""Factual-statement pruning (LokiLM): drop sentences stating precise facts, keep conceptual ones.

A sentence is "precise" when it carries a date, a year, a statistic or a measured quantity: "Alan Turing was
born on 23 June 1912" goes, "Alan Turing designed the Automatic Computing Engine" stays. The rule is
deliberately a regular expression, not a model: it is cheap, predictable, and easy to ablate.
"""

from __future__ import annotations

import re

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from lokilm.curate.words import RegexWordTokenizer

_MONTH = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
_UNIT = (r"(?:%|per ?cent|percent|km|kilomet(?:re|er)s?|m|metres?|meters?|cm|mm|miles?|feet|ft|inch(?:es)?|kg|kilograms?|"
         r"g|grams?|tons?|tonnes?|pounds?|lbs?|°[CF]?|degrees?|kelvin|K|mph|km/h|hectares?|acres?|litres?|liters?|"
         r"sq(?:uare)? ?(?:km|mi(?:les?)?)|years? old|people|inhabitants|residents|votes|million|billion|thousand|"
         r"dollars?|euros?|\$|£|€)")
_PRECISE = re.compile(
    rf"\b{_MONTH}\.? \d{{1,2}}(?:st|nd|rd|th)?,? \d{{3,4}}\b"  # June 23, 1912
    rf"|\b\d{{1,2}}(?:st|nd|rd|th)? (?:of )?{_MONTH},? \d{{3,4}}\b"  # 23 June 1912
    r"|\b(?:in|on|since|by|from|until|of|during|around|c\.|circa) (?:\d{3,4}|[12]\d{3}s)\b"  # in 1912, the 1920s
    r"|\b[12]\d{3}\s*[-–]\s*[12]?\d{2,3}\b"  # 1912–1954
    rf"|[$£€]\s?\d|\d(?:[\d,.]*\d)?\s?{_UNIT}(?![\w])"  # $5, 3.2 km, 45%, 12,000 people
    r"|\b(?:population|census|GDP|rate|average|median) (?:of|was|is|were)\b[^.]*\d",  # statistics
    re.IGNORECASE,
)


def is_precise(sentence: str) -> bool:
    return bool(_PRECISE.search(sentence))


class FactPruner(PipelineStep):
    name = "factual-statement pruning"
    type = "✂️ - FORMAT"

    def __init__(self):
        super().__init__()
        self.tokenizer = RegexWordTokenizer()

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            with self.track_time():
                kept, cut = prune_facts(doc.text, self.tokenizer)
            self.stat_update("sentences_removed", value=len(cut))
            self.stat_update("bytes_removed", value=sum(len(s.encode()) for s in cut))
            doc.text = kept
            yield doc


def prune_facts(text: str, tokenizer: RegexWordTokenizer | None = None) -> tuple[str, list[str]]:
    """The text without its precise-fact sentences (line breaks kept), and the sentences removed."""
    tokenizer = tokenizer or RegexWordTokenizer()
    lines, cut = [], []
    for line in text.split("\n"):
        sentences = tokenizer.sent_tokenize(line)
        keep = [s for s in sentences if not is_precise(s)]
        cut += [s for s in sentences if is_precise(s)]
        if keep or not sentences:
            lines.append(" ".join(keep) if len(keep) != len(sentences) else line)
    return "\n".join(lines), cut

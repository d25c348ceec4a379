"""The heuristic quality rules: datatrove's Gopher and C4 filters, configured from HeuristicsSettings."""

from __future__ import annotations

from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

from lokilm.curate.settings import HeuristicsSettings
from lokilm.curate.words import RegexWordTokenizer


def heuristic_filters(s: HeuristicsSettings, exclusion_writer) -> list:
    """The enabled rules as datatrove filter steps: lokilm's fast ones (`engine: lokilm`, the same decisions, reasons
    and text, lokilm/curate/fast_filters.py) or datatrove's own (`engine: datatrove`)."""
    if s.engine == "lokilm":
        from lokilm.curate.fast_filters import FastC4Quality, FastGopherQuality, FastGopherRepetition

        quality, repetition, c4, extra = FastGopherQuality, FastGopherRepetition, FastC4Quality, {}
    else:
        quality, repetition, c4 = GopherQualityFilter, GopherRepetitionFilter, C4QualityFilter
        extra = {"language": RegexWordTokenizer()}
    filters = []
    if s.gopher_quality:
        filters.append(quality(
            min_doc_words=s.min_doc_words, max_doc_words=s.max_doc_words, min_avg_word_length=s.min_avg_word_length,
            max_avg_word_length=s.max_avg_word_length, max_symbol_word_ratio=s.max_symbol_word_ratio,
            max_non_alpha_words_ratio=s.max_non_alpha_words_ratio, min_stop_words=s.min_stop_words,
            exclusion_writer=exclusion_writer, **extra))
    if s.gopher_repetition:
        filters.append(repetition(dup_line_frac=s.dup_line_frac, dup_para_frac=s.dup_para_frac,
                                  exclusion_writer=exclusion_writer, **extra))
    if s.c4:
        filters.append(c4(
            min_num_sentences=s.c4_min_num_sentences, filter_no_terminal_punct=s.c4_filter_no_terminal_punct,
            min_words_per_line=s.c4_min_words_per_line, filter_curly_bracket=s.c4_filter_curly_bracket,
            exclusion_writer=exclusion_writer, **extra))
    return filters

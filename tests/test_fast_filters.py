"""lokilm's fast heuristic filters against datatrove's own: the same decision, reason and rewritten text for every
document of the bundled corpus and for adversarial texts, under lokilm's settings and under datatrove's defaults."""

import random

import pytest
from datatrove.data import Document
from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

from lokilm.curate import fast_filters as ff
from lokilm.curate.heuristics import RegexWordTokenizer, heuristic_filters
from lokilm.curate.normalise import Normalise
from lokilm.curate.settings import HeuristicsSettings
from lokilm.data.readers import iter_documents

WIKI = ("The river rises in the hills to the north of the town and flows south through a wide valley. It was "
        "used for trade in the Middle Ages, and the mills that stood on its banks ground corn for the county. ")
ADVERSARIAL = [
    "", " ", "\n\n\n", ".", "!!! ??? ...", "#" * 500, "... " * 200, "… " * 100 + WIKI * 2,
    "- item one\n- item two\n• item three\n" * 40, "and so it goes...\n" * 60 + WIKI,
    WIKI * 3, (WIKI + "\n") * 12, ("the same line here\n" * 30) + WIKI, "\n\n".join([WIKI] * 5) + "\n\n" + WIKI[:50],
    "Lorem ipsum dolor sit amet. " * 40, WIKI * 2 + "\nlorem[1] ipsum is joined by a cut citation.\n" + WIKI,
    WIKI * 2 + "\nvar x = {a: 1};\n" + WIKI, WIKI * 2 + "\nEnable JavaScript to view this page.\n" + WIKI,
    WIKI * 2 + "\nRead our privacy policy and terms of use.\nWe use cookies.\n" + WIKI,
    WIKI * 2 + "\n" + "x" * 1200 + " long word line.\n" + WIKI, WIKI + "[edit] [citation needed] [12] [] " + WIKI,
    "Ünïcödé wörds ñ 中文字符 日本語 한국어 " * 30 + WIKI, "\u00a0".join(WIKI.split()) * 2, WIKI.replace(" ", "\u2028") * 2,
    WIKI.replace(" ", "\x1c") * 2 + WIKI, "a\udc80b " * 60 + WIKI, "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝔪𝔞𝔱𝔥 " * 40 + WIKI,
    "ab c " * 100, "a bc " * 50 + "ab c " * 50,  # "".join-ed n-grams of different words that read the same
    " ".join(["word"] * 400), " ".join(f"w{i % 7}" for i in range(600)), "1 2 3 4 5 6 7 8 9 " * 60,
    "#tag " * 60 + WIKI, "the river flows on past the mill and the old town wall and so on...\n" * 20,
    "1234 5678 9012 " * 40 + "the cat and the dog",
    "The end.\r\nOf the line.\r\n" * 30 + WIKI, "She said \"Go.\" Then left! Why? 'Yes.' (Done.) " * 20,
    "\t".join(WIKI.split()) + "\n\n\n\n" + WIKI, WIKI * 2 + "\n" * 10 + WIKI * 2, "{ " + WIKI * 3,
]


def random_texts(n: int, seed: int = 0) -> list[str]:
    """Texts made of few distinct words, lines and paragraphs: many repeats, to exercise every repetition rule."""
    rng = random.Random(seed)
    vocab = ["the", "of", "and", "a", "to", "in", "is", "it", "ab", "abc", "c", "bc", "--", "...", "#", "•", "x.",
             "Word!", "é", "{", "lorem", "ipsum", "[1]", "[edit]"]
    out = []
    for _ in range(n):
        words = [rng.choice(vocab[: rng.randint(3, len(vocab))]) for _ in range(rng.randint(0, 400))]
        seps = [rng.choice([" ", " ", " ", "\n", "\n\n", " \n"]) for _ in words]
        out.append("".join(w + s for w, s in zip(words, seps)))
    return out


def lokilm_filters(s: HeuristicsSettings):
    return [ff.FastGopherQuality(min_doc_words=s.min_doc_words, max_doc_words=s.max_doc_words,
                                 min_avg_word_length=s.min_avg_word_length, max_avg_word_length=s.max_avg_word_length,
                                 max_symbol_word_ratio=s.max_symbol_word_ratio,
                                 max_non_alpha_words_ratio=s.max_non_alpha_words_ratio, min_stop_words=s.min_stop_words),
            ff.FastGopherRepetition(dup_line_frac=s.dup_line_frac, dup_para_frac=s.dup_para_frac),
            ff.FastC4Quality(min_num_sentences=s.c4_min_num_sentences,
                             filter_no_terminal_punct=s.c4_filter_no_terminal_punct,
                             min_words_per_line=s.c4_min_words_per_line, filter_curly_bracket=s.c4_filter_curly_bracket)]


def datatrove_defaults():
    tok = RegexWordTokenizer()
    return [GopherQualityFilter(language=tok), GopherRepetitionFilter(language=tok), C4QualityFilter(language=tok)]


def decisions(filters, texts):
    """Per text and filter: datatrove's result (True or (False, reason)) and the text after it."""
    out = []
    for text in texts:
        doc, row = Document(text=text, id="t"), []
        for f in filters:
            result = f.filter(doc)
            row.append((result, doc.text))
        out.append(row)
    return out


@pytest.fixture(scope="module")
def corpus():
    norm = Normalise()
    return [norm.format(d.text) for d in iter_documents(["data/corpus"])]


def assert_same(texts, ours, theirs):
    a, b = decisions(ours, texts), decisions(theirs, texts)
    differ = [i for i in range(len(texts)) if a[i] != b[i]]
    assert not differ, f"{len(differ)} texts differ, the first: {texts[differ[0]][:200]!r}: {a[differ[0]]} vs {b[differ[0]]}"


def test_identical_to_datatrove_on_the_bundled_corpus(corpus):
    s = HeuristicsSettings()
    # each filter on every document, not only those the previous one kept: every rule meets real text
    assert_same(corpus, lokilm_filters(s), heuristic_filters(s, None))


def test_identical_to_datatrove_with_its_default_rules_on_the_corpus(corpus):
    assert_same(corpus[::3], [ff.FastGopherQuality(), ff.FastGopherRepetition(), ff.FastC4Quality()], datatrove_defaults())


@pytest.mark.parametrize("settings", ["lokilm", "datatrove"])
def test_identical_to_datatrove_on_adversarial_texts(settings):
    texts = ADVERSARIAL + random_texts(300)
    if settings == "lokilm":
        s = HeuristicsSettings(min_doc_words=5)  # short texts get past the length rule to the others
        assert_same(texts, lokilm_filters(s), heuristic_filters(s, None))
    else:
        assert_same(texts, [ff.FastGopherQuality(min_doc_words=5), ff.FastGopherRepetition(), ff.FastC4Quality()],
                    [GopherQualityFilter(min_doc_words=5, language=RegexWordTokenizer()), *datatrove_defaults()[1:]])


def test_every_reason_is_exercised():
    """The adversarial texts reach the rules they are meant for (else the comparison above proves little)."""
    texts = ADVERSARIAL + random_texts(300)
    reasons = {r[1] for row in decisions([ff.FastGopherQuality(min_doc_words=5), ff.FastGopherRepetition(),
                                          ff.FastC4Quality()], texts) for r, _ in row if r is not True}
    assert {"gopher_short_doc", "gopher_too_many_hashes", "gopher_too_many_ellipsis", "gopher_too_many_bullets",
            "gopher_too_many_end_ellipsis", "gopher_below_alpha_threshold", "gopher_enough_stop_words", "empty",
            "dup_para_frac", "dup_line_frac", "top_2_gram", "duplicated_5_n_grams", "lorem_ipsum", "curly_bracket",
            "too_few_sentences"} <= reasons


def test_a_hash_collision_falls_back_to_datatrove(monkeypatch):
    """Force every n-gram hash to collide: the text check catches it and datatrove's count is used."""
    text = " ".join(f"w{i % 50}" for i in range(2000))
    a = ff.TextAnalysis(text)
    expected = [ff.find_all_duplicate(a.words, n) for n in (5, 6)]
    monkeypatch.setattr(ff.TextAnalysis, "span_hash", lambda self, x, y: (x * 0).astype("uint64"))
    assert [ff._duplicated_ngram_chars(ff.TextAnalysis(text), n, float("inf")) for n in (5, 6)] == expected
    monkeypatch.setattr(ff, "_word_hashes", lambda a: (a.prefix[1][:-1] % 3).astype("uint64"))
    t = ff.TextAnalysis(text)
    assert ff._top_ngram_chars(t, 2) == ff.find_top_duplicate(ff.get_n_grams(t.words, 2))


def test_filters_are_datatrove_steps_with_stats(tmp_path):
    """They run in a datatrove pipeline and drop with the reason in the metadata, as datatrove's filters do."""
    from datatrove.pipeline.filters.base_filter import BaseFilter

    f = ff.FastGopherQuality()
    assert isinstance(f, BaseFilter)
    docs = [Document(text="too short", id="a"), Document(text=WIKI * 3, id="b")]
    kept = list(f.run(iter(docs)))
    assert [d.id for d in kept] == ["b"]
    assert f.stats["dropped_gopher_short_doc"].total == 1


def test_c4_by_sentences_is_identical_too():
    """C4 with split_paragraph=False applies its line rules to sentences."""
    texts = ADVERSARIAL + random_texts(100, seed=1)
    assert_same(texts, [ff.FastC4Quality(split_paragraph=False)],
                [C4QualityFilter(split_paragraph=False, language=RegexWordTokenizer())])

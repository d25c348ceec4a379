"""lokilm's fast MinHash signatures against datatrove's own: the same simplified text, the same shingles, the same
signature and byte-identical signature files, on the bundled corpus and on adversarial texts."""

import random
import re
import sys

import numpy as np
import pytest
from datatrove.data import Document
from datatrove.pipeline.dedup import MinhashDedupSignature
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import PUNCTUATION, TextNormConfig
from datatrove.utils.text import simplify_text as datatrove_simplify

from lokilm.curate.fast_minhash import FastMinhashDedupSignature, simplify_text
from lokilm.curate.normalise import Normalise
from lokilm.curate.words import RegexWordTokenizer
from lokilm.data.readers import iter_documents

ADVERSARIAL = [
    "", " ", "\n\t ", ".", "a", "one two three four", "one two three four five", "Ünïcödé wörds ñ 中文 日本語 " * 9,
    "e\u0301 a\u0300 \u0301 lone mark \u0301\u0302 between spaces", "\u0301", " \u0301 ", "\u0301word\u0301",
    "café naïve façade coöperate résumé Ångström", "ﬁ ligature ǅ Ⅻ ½ ²", "1,234.56 and ١٢٣٫٤ and 12⎖5 and 007",
    "Monday January the 3rd", "\u00a0non\u00a0breaking\u2028line\u2029para\u3000ideo\x1cfile\x1dsep\x85nel",
    "tabs\tand\r\nnewlines\x0b\x0c and nulls\x00 \x7f\x9f", "a\udc80b lone surrogate " * 5, "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝔪𝔞𝔱𝔥 " * 8,
    "“Quoted,” she said — ‘twice’ … «guillemets» 【brackets】 （全角） ！？", PUNCTUATION * 3, "x" + PUNCTUATION + "y",
    "İstanbul ΣΊΣΥΦΟΣ ß ẞ", "ab c " * 100, " ".join(["word"] * 400), "The End.\n\n\n" * 50,
]


def random_texts(n: int, seed: int = 0) -> list[str]:
    """Random mixes of words, punctuation, digits, combining marks and odd whitespace."""
    rng = random.Random(seed)
    pieces = ["the", "river", "café", "e\u0301", "\u0301", "\u0308", "1", "2.5", "٣", "—", "…", "!", "(", ")", "中",
              "Ω", "ß", "ǅ", "\u00a0", "\u2028", "\x1c", "\t", "\n", " ", "  ", "Monday", "''", "\u200b", "\ufeff"]
    return ["".join(rng.choice(pieces) + rng.choice(["", " ", " ", "\n"]) for _ in range(rng.randint(0, 300)))
            for _ in range(n)]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    norm = Normalise()
    return [norm.format(d.text) for d in iter_documents(["data/corpus"])]


def test_whitespace_and_punctuation_shortcuts_hold_for_every_code_point():
    # " ".join(t.split()) is datatrove's re.sub(r"\s+", " ", t.strip()) only if \s and str.isspace agree everywhere
    space = re.compile(r"\s")
    mismatches = [i for i in range(sys.maxunicode + 1) if bool(space.fullmatch(chr(i))) != chr(i).isspace()]
    assert mismatches == []
    text = "".join(chr(i) for i in range(0x3000)) + PUNCTUATION
    assert simplify_text(text) == datatrove_simplify(text)


def test_simplify_text_is_datatrove_on_adversarial_random_and_corpus_texts(corpus):
    texts = ADVERSARIAL + random_texts(400) + corpus
    assert any(not t.isascii() for t in corpus) and any(t.isascii() for t in corpus)  # both paths are exercised
    for t in texts:
        assert simplify_text(t) == datatrove_simplify(t), t[:80]
    every = TextNormConfig(norm_weekdays=True, norm_monthnames=True)
    none = TextNormConfig(lowercase=False, norm_whitespace=False, remove_punctuation=False,
                          norm_unicode_diacritics=False, norm_numbers=False)
    partial = TextNormConfig(norm_whitespace=False)  # marks removed, whitespace runs kept
    for config in (every, none, partial):
        for t in ADVERSARIAL + random_texts(100, seed=1):
            assert simplify_text(t, config) == datatrove_simplify(t, config), (config, t[:80])


@pytest.mark.parametrize("hash_config", [HashConfig(), HashConfig(precision=32), HashConfig(hash_fc="sha1")],
                         ids=["xxhash64", "xxhash32", "sha1"])
def test_shingles_and_signatures_equal_datatrove(tmp_path, corpus, hash_config):
    config = MinhashConfig(hash_config=hash_config)
    ours = FastMinhashDedupSignature(str(tmp_path / "a"), config, language=RegexWordTokenizer())
    theirs = MinhashDedupSignature(str(tmp_path / "b"), config, language=RegexWordTokenizer())
    for t in ADVERSARIAL + random_texts(200) + corpus[::3]:
        if not t.encode("utf-8", "surrogatepass").decode("utf-8", "replace") == t:  # a lone surrogate: both fail
            with pytest.raises(UnicodeEncodeError):
                theirs.get_shingles(t)
            with pytest.raises(UnicodeEncodeError):
                ours.get_shingles(t)
            continue
        a, b = ours.get_shingles(t), theirs.get_shingles(t)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), t[:80]
        if a.size:
            assert ours.get_signature(a) == theirs.get_signature(b), t[:80]


def test_signature_blocks_and_the_mersenne_fold_are_exact(tmp_path):
    step = FastMinhashDedupSignature(str(tmp_path), MinhashConfig(), language=RegexWordTokenizer())
    reference = MinhashDedupSignature(str(tmp_path), MinhashConfig(), language=RegexWordTokenizer())
    rng = np.random.default_rng(0)
    a, b = step.parameters
    p = (1 << 61) - 1
    # many blocks, plus shingles whose a*s+b lands exactly on p and just past it (folded sums >= p)
    shingles = rng.integers(0, 2**64 - 1, size=(3000, 1), dtype=np.uint64, endpoint=True)
    j = next(j for j in range(a.shape[1]) if int(a[0, j]) % 2)  # an odd multiplier is invertible modulo 2**64
    a0, b0 = int(a[0, j]), int(b[0, j])
    targets = [p, p + 1, p + 6, 2 * p, 3 * p + 2]
    special = [((t - b0) * pow(a0, -1, 1 << 64)) % (1 << 64) for t in targets]
    shingles = np.concatenate([shingles, np.array(special, dtype=np.uint64)[:, None]])
    assert step.get_signature(shingles) == reference.get_signature(shingles)
    assert step.get_signature(shingles[-len(special):]) == reference.get_signature(shingles[-len(special):])
    assert step.get_signature(shingles[:1]) == reference.get_signature(shingles[:1])


def test_signature_files_are_byte_identical(tmp_path, corpus):
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(corpus + ADVERSARIAL) if "\udc80" not in t]
    config = MinhashConfig()
    for name, cls in (("ours", FastMinhashDedupSignature), ("theirs", MinhashDedupSignature)):
        cls(str(tmp_path / name), config, language=RegexWordTokenizer()).run(iter(docs))
    ours = sorted((tmp_path / "ours").rglob("*.sig"))
    assert len(ours) == config.num_buckets
    for path in ours:
        other = tmp_path / "theirs" / path.relative_to(tmp_path / "ours")
        assert path.read_bytes() == other.read_bytes() and path.stat().st_size > 0

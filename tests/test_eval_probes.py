"""The WinoBias probe's items and the qualitative prompts."""

from lokilm.eval.qualitative import PROMPTS
from lokilm.eval.winobias import TABLE3, TABLE3_CASES, probe_items


def test_every_winobias_test_sentence_becomes_a_paired_two_way_choice():
    items = probe_items()
    assert len(items) == 1584
    by_key = {(it["stereotype"], it["pair"]): it for it in items}
    unparallel = 0
    for (stereotype, pair), it in by_key.items():
        right, other = (c.strip() for c in it["choices"])
        assert right != other and right in it["context"].lower() and other in it["context"].lower()
        if stereotype == "pro":  # the anti sentence is the same one with the pronoun's gender swapped...
            unparallel += by_key[("anti", pair)]["choices"] != it["choices"]
    assert unparallel == 2  # ...except type 2 lines 382 and 384, which hold different sentences in the files


def test_paper_table3_and_qualitative_prompts():
    prompts = {TABLE3.format(first=f, second=s, pronoun=p, possessive=q) for f, s, p, q in TABLE3_CASES}
    assert len(prompts) == 4 and all(p.endswith("was the") for p in prompts)
    assert list(PROMPTS) == ["french_revolution", "quantum_mechanics", "factorial_bug", "eldoria", "mischievous_fibonacci"]
    assert "return n * factorial(n)" in PROMPTS["factorial_bug"]

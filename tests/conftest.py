import lzma
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _run_from_repo_root():
    # configs and the bundled data are addressed relative to the repository root, as in the README
    os.chdir(ROOT)


@pytest.fixture(scope="session")
def sample_text() -> str:
    """Real text from the bundled corpus: a Shakespeare play."""
    return lzma.open(ROOT / "data/corpus/shakespeare/macbeth_gut.txt.xz", "rt", encoding="utf-8").read()


@pytest.fixture(scope="session")
def small_tokenizer(sample_text):
    from lokilm.tokenizer import train_bpe

    return train_bpe([sample_text], vocab_size=512)

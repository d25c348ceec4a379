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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: at test shapes a second thread costs more than it saves, and on a busy 2-core
    machine the two spin-wait against any other process (docs/LOG.md)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sample_text() -> str:
    """Real text from the bundled corpus: a Shakespeare play."""
    return lzma.open(ROOT / "data/corpus/shakespeare/macbeth_gut.txt.xz", "rt", encoding="utf-8").read()


@pytest.fixture(scope="session")
def small_tokenizer(sample_text):
    from lokilm.tokenizer import train_bpe

    return train_bpe([sample_text], vocab_size=512)


# A model small enough that a few dozen training steps take seconds on 2 CPU cores.
SMALL = ["model.vocab_size=512", "model.n_layer=2", "model.n_head=2", "model.d_model=64", "model.d_ff=128",
         "model.context_length=64", "train.micro_batch_size=8", "train.batch_size=16", "train.lr=3e-3",
         "train.warmup_steps=5", "train.eval_batches=2", "train.progress=false", "train.tensorboard=false"]


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, _run_from_repo_root):
    """A tokenizer and shards built by the real stages from bundled Shakespeare, shared by the tests."""
    from lokilm import stages
    from lokilm.config import load_config

    root = tmp_path_factory.mktemp("prepared")
    cfg = load_config("configs/tiny.yaml", SMALL + [f"run_dir={root}", "data.inputs=[data/corpus/shakespeare]",
                                                    "data.holdout_fraction=0.2", "tokenizer.train_max_bytes=3000000"])
    stages.tokenizer_stage(cfg)
    stages.tokenize_stage(cfg)
    return root


@pytest.fixture(scope="session")
def make_cfg(prepared):
    """Build the config of a small model that trains on the prepared shards, in its own run directory."""
    from lokilm.config import load_config

    def overrides(run_dir):
        """The same settings as command-line overrides, for tests that drive the `loki` command."""
        return SMALL + [f"run_dir={run_dir}", f"data.shards={prepared}/shards", f"tokenizer.path={prepared}/tokenizer.json"]

    def make(run_dir, *more):
        return load_config("configs/tiny.yaml", [*overrides(run_dir), *more])
    make.overrides = overrides
    return make

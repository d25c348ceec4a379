import pytest

from lokilm.config import ConfigError, load_config

CONFIGS = ["configs/tiny.yaml", "configs/stlm-10m.yaml", "configs/stlm-50m.yaml", "configs/stlm-100m.yaml",
           "configs/lokilm-1.4b.yaml", "configs/quickstart.yaml"]


@pytest.mark.parametrize("path", CONFIGS)
def test_presets_load(path):
    cfg = load_config(path)
    assert cfg.model.d_model % cfg.model.n_head == 0


def test_overrides_are_typed():
    cfg = load_config("configs/tiny.yaml", ["train.max_steps=200", "model.position=rope", "train.lr=1e-3",
                                            "model.n_kv_head=2", "train.spike.zscore=4", "model.tie_embeddings=false"])
    assert cfg.train.max_steps == 200 and isinstance(cfg.train.max_steps, int)
    assert cfg.model.position == "rope"
    assert cfg.train.lr == 1e-3
    assert cfg.model.n_kv_head == 2
    assert cfg.train.spike.zscore == 4.0
    assert cfg.model.tie_embeddings is False


def test_preset_inherits_and_says_only_what_differs():
    base, child = load_config("configs/stlm-50m.yaml"), load_config("configs/stlm-10m.yaml")
    assert child.train.warmup_steps == base.train.warmup_steps == 5000
    assert child.model.d_model == 256 and base.model.d_model == 512


@pytest.mark.parametrize("override, message", [
    ("train.max_step=5", "unknown config key 'train.max_step'; did you mean train.max_steps?"),
    ("trian.max_steps=5", "unknown config key 'trian'"),
    ("model.position=sinusoid", "model.position: 'sinusoid' is not one of 'alibi', 'rope', 'learned'"),
    ("train.max_steps=lots", "train.max_steps: expected an integer, got 'lots'"),
    ("train.max_steps=2.5", "train.max_steps: expected an integer"),
    ("model.tie_embeddings=maybe", "model.tie_embeddings: expected true or false"),
    ("train.batch_size=20", "train.batch_size: 20 is not a multiple of train.micro_batch_size=16"),
    ("model.n_head=3", "model.d_model: 128 is not divisible by model.n_head=3"),
    ("train", "not of the form key=value"),
    ("train=3", "train is a section"),
    ("distill.every=0", "distill.every: must be positive, got 0"),
    ("distill.gen_batch_size=0", "distill.gen_batch_size: must be positive, got 0"),
    ("distill.logit_top_k=0", "distill.logit_top_k: must be positive or null"),
    ("distill.cache_sequences=0", "distill.cache_sequences: must be positive or null"),
    ("distill.top_k=0", "distill.top_k: must be positive or null"),
    ("distill.prefix_fraction=1.0", "distill.prefix_fraction: must be in (0, 1)"),
    ("distill.prefix_fraction=0", "distill.prefix_fraction: must be in (0, 1)"),
    ("distill.max_regenerations=-1", "distill.max_regenerations: must be >= 0"),
    ("distill.temperature=-0.5", "distill.temperature: must be >= 0"),
    ("distill.top_p=0", "distill.top_p: must be in (0, 1]"),
    ("distill.top_p=1.5", "distill.top_p: must be in (0, 1]"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("configs/tiny.yaml", [override])
    assert message in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layrs: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.n_layrs'; did you mean model.n_layer"):
        load_config(bad)
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("model: 3\n")
    with pytest.raises(ConfigError, match="model: expected a section"):
        load_config(bad)


def test_distill_limits_may_be_unset_or_greedy():
    cfg = load_config("configs/tiny.yaml", ["distill.top_k=null", "distill.top_p=null", "distill.logit_top_k=null",
                                            "distill.temperature=0", "distill.top_p=1", "distill.max_regenerations=0"])
    assert cfg.distill.top_k is None and cfg.distill.temperature == 0 and cfg.distill.top_p == 1.0


def test_saving_the_run_config_is_atomic(tmp_path, monkeypatch):
    # generate/eval/consolidate read config.yaml while a later command may rewrite it: never half a file
    from lokilm import fileio
    from lokilm.rundir import RunDir

    cfg = load_config("configs/tiny.yaml", [f"run_dir={tmp_path}"])
    RunDir(cfg).save_config()
    before = (tmp_path / "config.yaml").read_text()

    def crash(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "replace", crash)
    cfg.train.max_steps += 1
    with pytest.raises(OSError):
        RunDir(cfg).save_config()
    assert (tmp_path / "config.yaml").read_text() == before

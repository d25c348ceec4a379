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

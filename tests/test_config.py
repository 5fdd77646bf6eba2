import pytest
import yaml

from mtlsweep.config.errors import ConfigError

from mtlsweep.config.run import RunConfig, flatten, load_config, unflatten, validate


def write(tmp_path, tree, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(tree))
    return p


def test_defaults_are_basset():
    cfg = RunConfig()
    assert cfg.model.arch.conv_channels == [300, 200, 200]
    assert cfg.model.arch.conv_widths == [19, 11, 7]
    assert cfg.model.arch.pool == [3, 4, 4]
    assert cfg.model.arch.dense == [1000, 1000]
    assert cfg.optim.name == "rmsprop" and cfg.optim.lr == 0.002 and cfg.optim.alpha == 0.98
    assert cfg.optim.max_norm == 7.0 and cfg.data.batch_size == 128


def test_flatten_round_trip():
    cfg = RunConfig()
    flat = cfg.flatten()
    assert flat["model.sharing.strength"] == 0.0
    assert flat["model.arch.conv_channels"] == [300, 200, 200]
    assert "model.sharing" not in flat
    assert RunConfig.from_flat(flat) == cfg
    assert unflatten(flatten({"a": {"b": {"c": 1}}, "d": None})) == {"a": {"b": {"c": 1}}, "d": None}


def test_overrides_apply_and_validate():
    cfg = RunConfig().with_overrides({"model.sharing.strength": 0.5, "model.sharing.coupling": "l2",
                                      "model.sharing.shared_layers": 2})
    assert cfg.model.sharing.strength == 0.5
    with pytest.raises(ConfigError, match=r"model\.sharing\.strength: must be >= 0"):
        RunConfig().with_overrides({"model.sharing.strength": -1})
    with pytest.raises(ConfigError, match=r"unknown key 'model\.sharing\.strenght'"):
        RunConfig().with_overrides({"model.sharing.strenght": 1})


@pytest.mark.parametrize("tree, pattern", [
    ({"model": {"sharing": {"strenght": 1}}}, r"model\.sharing\.strenght: unknown key"),
    ({"optim": {"lr": "fast"}}, r"optim\.lr: .*got 'fast'"),
    ({"optim": {"name": "lbfgs"}}, r"optim\.name: must be one of 'rmsprop', 'adam', 'adamw' or 'sgd', got 'lbfgs'"),
    ({"train": {"epochs": 0}}, r"train\.epochs: must be >= 1, got 0"),
    ({"model": {"sharing": {"shared_layers": 9}}}, r"model: .*shared_layers must be between 0 and 5"),
    ({"model": {"arch": {"conv_widths": [5]}}}, r"model\.arch: .*same length"),
    ({"init": {"kind": "from_hard"}}, r"init: checkpoint is required when kind is from_hard"),
    ({"schedule": {"weighting": "pcgrad"}, "model": {"sharing": {"shared_layers": 0}}},
     r"weighting=pcgrad needs shared parameters"),
    ({"schedule": {"warm_start": {"epochs": -1}}}, r"schedule\.warm_start\.epochs: must be >= 0, got -1"),
    ({"schedule": {"anneal_floor": 1.5}}, r"schedule\.anneal_floor: must be <= 1"),
    ({"schedule": {"warm_start": {"task": 0, "epochs": 4}}, "train": {"epochs": 4}},
     r"warm_start\.epochs=4 leaves no epoch for the other tasks \(train\.epochs=4\)"),
    ({"model": {"sharing": {"coupling": "l2_zero", "tower_init": "same"}}}, r"tower_init: must be one of"),
    ({"train": {"device": "tpu"}}, r"train\.device"),
    ({"bogus": {}}, r"bogus: unknown key"),
])
def test_bad_values_name_the_field(tmp_path, tree, pattern):
    p = write(tmp_path, tree)
    with pytest.raises(ConfigError, match=pattern) as exc:
        load_config(p)
    assert "\n" not in str(exc.value)
    assert str(p) in str(exc.value)


def test_load_yaml_and_set(tmp_path):
    p = write(tmp_path, {"model": {"sharing": {"shared_layers": 0}}, "train": {"epochs": 3}})
    cfg = load_config(p, ["train.seed=7", "model.arch.dense=[8, 8]"])
    assert cfg.train.seed == 7 and cfg.model.arch.dense == [8, 8] and cfg.train.epochs == 3
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(p, ["train.seed"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        validate([1, 2])


def test_yaml_dump_reloads(tmp_path):
    cfg = RunConfig().with_overrides({"train.seed": 3})
    p = tmp_path / "x.yaml"
    p.write_text(cfg.to_yaml())
    assert load_config(p) == cfg


def test_shipped_configs_pair_with_their_baseline():
    """`mtlsweep compare` matches hard.yaml and soft.yaml runs with a single.yaml run out of the box."""
    from mtlsweep.config.identity import baseline_fingerprint
    from mtlsweep.config.run import load_config
    from mtlsweep.models.net import build_model
    cfgs = {n: load_config(f"search/configs/{n}.yaml") for n in ("single", "hard", "soft", "motif_gbm")}
    fp = {n: baseline_fingerprint(c, "data", ["a", "b"]) for n, c in cfgs.items() if n != "motif_gbm"}
    assert fp["single"] == fp["hard"] == fp["soft"]
    assert cfgs["motif_gbm"].model.family == "motif_gbm"
    # hard.yaml's width only names its counterpart: every layer of it is shared.
    one = cfgs["hard"].with_overrides({"model.width": 1.0})
    n = [sum(p.numel() for p in build_model(c.model, 3, 4, 600, None, 0).parameters()) for c in (cfgs["hard"], one)]
    assert n[0] == n[1]

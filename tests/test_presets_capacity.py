"""Named trunks (model.arch.preset), shared_layers all/convs, and the capacity-matched control."""
import pytest
import torch

from mtlsweep.config.errors import ConfigError
from mtlsweep.config.identity import model_family
from mtlsweep.config.run import ARCH_PRESETS, ModelConfig, RunConfig, validate
from mtlsweep.models import build_model
from mtlsweep.models.capacity import planned_params


def test_a_preset_sets_the_trunk_lists_and_is_searchable_with_all_and_convs():
    cfg = RunConfig().with_overrides({"model.arch.preset": "motif", "model.sharing.shared_layers": "all"})
    assert cfg.model.arch.conv_channels == [64] and cfg.model.arch.pool == [0] and cfg.model.n_shared == 2
    assert model_family(cfg) == "hard"
    deep = cfg.with_overrides({"model.arch.preset": "deep"})            # the same "all" follows the trunk
    assert deep.model.arch.conv_channels == [64, 32, 32] and deep.model.n_shared == 5
    assert model_family(deep.with_overrides({"model.sharing.shared_layers": "convs"})) == "branched"
    assert RunConfig.from_flat(deep.flatten()) == deep                   # the dotted keys round-trip
    own = deep.with_overrides({"model.arch.conv_channels": [16, 16, 16]})  # a list by hand leaves the preset
    assert own.model.arch.preset is None and own.model.arch.conv_channels == [16, 16, 16]
    with pytest.raises(ConfigError, match="differs from preset motif"):
        validate({"model": {"arch": {"preset": "motif", "conv_channels": [8]}}})
    with pytest.raises(ConfigError, match="preset"):
        validate({"model": {"arch": {"preset": "huge"}}})
    with pytest.raises(ConfigError, match="all or convs"):
        validate({"model": {"arch": {"preset": "motif"}, "sharing": {"shared_layers": 3}}})


def test_global_pool_fits_any_length():
    cfg = ModelConfig.model_validate({"arch": {"preset": "motif"}, "sharing": {"shared_layers": "all"}})
    for length in (60, 120, 600):
        model = build_model(cfg, 3, 4, length, None, seed=0)
        assert model.specs[0].out_len == 1 and model.specs[0].pool == length - 15 + 1
        assert model(torch.zeros(2, 4, length)).shape == (2, 3)


@pytest.mark.parametrize("sharing", [{"shared_layers": "all"}, {"shared_layers": 0}, {"shared_layers": "convs"},
                                     {"shared_layers": 0, "coupling": "cross_stitch"},
                                     {"shared_layers": 0, "group_layers": "all", "groups": [[0, 1], [2]]}])
def test_planned_parameter_counts_equal_the_models(sharing):
    cfg = ModelConfig.model_validate({"arch": {"preset": "deep"}, "sharing": sharing, "width": 0.25})
    groups = [0, 0, 1] if "group_layers" in sharing else None
    model = build_model(cfg, 3, 4, 120, None, seed=0, groups=groups)
    assert planned_params(cfg, 3, 4, 120, 2 if groups else 0) == model.n_params()


@pytest.mark.parametrize("preset", ["deep", "motif"])
def test_capacity_matched_trunk_has_the_towers_parameter_count(preset):
    hard = ModelConfig.model_validate({"arch": {"preset": preset}, "sharing": {"shared_layers": "all"}, "width": 0.125})
    towers = build_model(hard.model_copy(update={"sharing": hard.sharing.model_copy(update={"shared_layers": 0})}),
                         16, 4, 120, None, seed=0).n_params()
    matched = build_model(hard.model_copy(update={"capacity": "match_towers"}), 16, 4, 120, None, seed=0)
    plain = build_model(hard, 16, 4, 120, None, seed=0).n_params()
    assert abs(matched.n_params() - towers) / towers < 0.03, (plain, towers, matched.n_params())
    assert matched.cfg.shared_width != 1.0
    # towers alone (nothing shared) are left as they are
    single = hard.model_copy(update={"capacity": "match_towers",
                                     "sharing": hard.sharing.model_copy(update={"shared_layers": 0})})
    assert build_model(single, 16, 4, 120, None, seed=0).n_params() == towers


def test_every_preset_is_a_valid_trunk():
    for name in ARCH_PRESETS:
        cfg = ModelConfig.model_validate({"arch": {"preset": name}})
        assert cfg.arch.preset == name

"""Fixed-design (grid) spaces: parsing, checks before Ray, and the configs each point yields."""
from pathlib import Path

import pytest
import yaml

from mtlsweep.search.grid import GridSpace
from mtlsweep.search.space import load_space
from mtlsweep.search.trial import SweepContext, trial_config
from mtlsweep.config.errors import ConfigError
from mtlsweep.config.run import RunConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def _load(tmp_path, tree, base=None):
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(tree, sort_keys=False))
    return load_space(p, base)


def test_variants_cross_the_grid_and_expand_into_trial_configs(tmp_path):
    space = _load(tmp_path, {"variants": {"hard": {}, "soft": {"model.sharing.shared_layers": 0,
                                                               "model.sharing.coupling": "l2",
                                                               "model.sharing.strength": 0.3}},
                             "grid": {"train.seed": [0, 1, 2]}}, RunConfig())
    assert isinstance(space, GridSpace) and space.size == 6 and space.keys == ["variant", "train.seed"]
    assert space.points()[3] == {"variant": "soft", "train.seed": 0}
    ctx = SweepContext(base=RunConfig().flatten(), variants=space.variants)
    cfg = trial_config({"variant": "soft", "train.seed": 2}, ctx)
    assert (cfg.model.sharing.shared_layers, cfg.model.sharing.coupling, cfg.model.sharing.strength,
            cfg.train.seed) == (0, "l2", 0.3, 2)
    assert trial_config({"variant": "hard", "train.seed": 1}, ctx).model.sharing.coupling == "none"
    with pytest.raises(ValueError, match="variant 'branched'"):
        trial_config({"variant": "branched"}, ctx)


def test_tune_values_cross_every_variant_and_are_the_baselines_candidates(tmp_path):
    space = _load(tmp_path, {"variants": {"hard": {}, "towers_like": {"model.sharing.shared_layers": 0}},
                             "grid": {"train.seed": [0, 1]}, "tune": {"optim.weight_decay": [0.01, 0.1]}}, RunConfig())
    assert space.size == 8 and space.keys == ["variant", "train.seed", "optim.weight_decay"]
    assert len(space.points(with_tune=False)) == 4
    assert space.tune_points() == [{"optim.weight_decay": 0.01}, {"optim.weight_decay": 0.1}]


@pytest.mark.parametrize("tree, pattern", [
    ({"variants": {"a": {"model.sharing.strenght": 1}}}, r"variants\.a: model\.sharing\.strenght: unknown config key"),
    ({"variants": {"a": {"model.sharing.strength": -1}}}, r"model\.sharing\.strength: must be >= 0"),
    ({"grid": {"train.seed": []}}, r"grid\.train\.seed: expected a non-empty list"),
    ({"grid": {"train.seed": [0, 0]}}, r"grid\.train\.seed: duplicate values"),
    ({"grid": {"variant": ["a"]}}, r"grid\.variant: reserved"),
    ({"variants": {"a": {}}, "seeds": [0]}, r"unknown top-level key\(s\) \['seeds'\]"),
    ({"variants": ["a", "b"]}, r"variants: expected a mapping"),
    ({"tune": {"model.sharing.strength": [0.1, 1.0]}}, r"tune\.model\.sharing\.strength: only optimizer, regularization and architecture"),
    ({"grid": {"optim.lr": [0.1]}, "tune": {"optim.lr": [0.1, 0.2]}}, r"optim\.lr: in both grid and tune"),
])
def test_invalid_grids_are_refused_before_ray(tmp_path, tree, pattern):
    with pytest.raises(ConfigError, match=pattern):
        _load(tmp_path, tree, RunConfig())


def test_the_ground_truth_study_design_is_valid():
    from mtlsweep.config.identity import model_family
    from mtlsweep.studies.ground_truth import AFFINITY_ARM, load_design
    study = REPO / "search" / "spaces" / "ground_truth"
    base = load_config(study / "base.yaml", ["data.path=/nonexistent/store.h5"])
    space = load_space(study / "variants.yaml", base)
    # every arm tuned alike over the learning rate jointly with the weight decay, with an interior point
    assert set(space.tune) == {"optim.lr", "optim.weight_decay"} and all(len(v) >= 3 for v in space.tune.values())
    fams = {model_family(base.with_overrides(space.overrides({"variant": n}))) for n in space.variants}
    assert {"hard", "soft", "control", "branched", "grouped"} <= fams          # sharing and its controls
    trunks = {base.with_overrides(space.overrides({"variant": n})).model.arch.preset for n in space.variants}
    assert trunks == {"motif", "deep"}                                        # the trunk is not one constant
    design = load_design(study / "regimes.yaml", study / "variants.yaml")
    assert len(design.seeds) >= 3                                             # data seeds, not training seeds
    assert {r["shared_fraction"] for r in design.regimes.values()} == {0.67, 0.0}
    assert any(r.get("motif_source") == "denovo" for r in design.regimes.values())   # motif_gbm without its prior
    assert set(design.references) == {"motif_gbm", "kmer_linear"}
    assert AFFINITY_ARM in design.arms["related"] and "deep_hard" in design.arms["related"]
    quick = load_design(study / "regimes.yaml", study / "variants.yaml", quick=True)
    assert set(quick.regimes) == {"related", "unrelated"} and not any(a.startswith("deep_") for a in quick.arms["related"])
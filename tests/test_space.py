import optuna
import pytest
import yaml

from mtlsweep.search.space import load_space, parse_space
from mtlsweep.config.errors import ConfigError
from mtlsweep.config.run import RunConfig

SPACE = {
    "model.sharing.shared_layers": {"type": "categorical", "values": [0, 3, 5]},
    "model.sharing.coupling": {"type": "categorical", "values": ["none", "l2"],
                               "when": {"model.sharing.shared_layers": {"lt": 5}}},
    "model.sharing.strength": {"type": "loguniform", "low": 1e-4, "high": 1.0,
                               "when": {"model.sharing.coupling": {"not": "none"}}},
    "schedule.warm_start.epochs": {"type": "int", "low": 0, "high": 2},
    "schedule.warm_start.task": {"type": "categorical", "values": [0, 1],
                                 "when": {"schedule.warm_start.epochs": {"gt": 0}}},
    "optim.lr": {"type": "float", "low": 0.0005, "high": 0.005},
}


def test_define_by_run_samples_only_applicable_dimensions():
    space = parse_space(SPACE)
    space.check_against(RunConfig())
    fn = space.define_by_run()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_strength = seen_no_coupling = 0
    for _ in range(40):
        trial = study.ask()
        constants = fn(trial) or {}
        p = trial.params
        assert set(constants) == set(SPACE) - set(p) and set(constants.values()) <= {"n/a"}
        if p["model.sharing.shared_layers"] == 5:
            assert "model.sharing.coupling" not in p and "model.sharing.strength" not in p
        elif p["model.sharing.coupling"] == "none":
            assert "model.sharing.strength" not in p
            seen_no_coupling += 1
        else:
            assert 1e-4 <= p["model.sharing.strength"] <= 1.0
            seen_strength += 1
        assert ("schedule.warm_start.task" in p) == (p["schedule.warm_start.epochs"] > 0)
        study.tell(trial, 0.5)
    assert seen_strength and seen_no_coupling


@pytest.mark.parametrize("tree, pattern", [
    ({"model.sharing.strenght": {"type": "float", "low": 0, "high": 1}}, r"model\.sharing\.strenght: unknown config key"),
    ({"optim.lr": {"type": "float", "low": 1, "high": 0.1}}, r"impossible range low=1 high=0\.1"),
    ({"optim.lr": {"type": "loguniform", "low": 0, "high": 0.1}}, r"log range needs low > 0"),
    ({"optim.lr": {"type": "gaussian", "low": 0, "high": 1}}, r"optim\.lr\.type: must be one of"),
    ({"optim.lr": {"type": "float", "low": 0.001, "high": 0.01, "when": {"model.sharing.coupling": "l2"}}},
     r"condition on 'model\.sharing\.coupling', which is not a dimension defined before it"),
    ({"model.sharing.strength": {"type": "float", "low": -1, "high": 1}}, r"model\.sharing\.strength: must be >= 0"),
    ({"optim.name": {"type": "categorical", "values": ["adam", "lbfgs"]}}, r"optim\.name: must be one of"),
    ({"optim.lr": {"type": "categorical", "values": []}}, r"non-empty list"),
])
def test_invalid_spaces_are_refused_before_ray(tmp_path, tree, pattern):
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match=pattern):
        load_space(p, RunConfig())


def test_spaces_shipped_in_the_repo_are_valid():
    from pathlib import Path
    from mtlsweep.config.run import load_config
    root = Path(__file__).resolve().parents[1] / "search"
    # The demo's space searches its trunk; the others search sharing on Basset's five layers.
    demo, basset = load_config(root / "configs" / "demo.yaml"), load_config(root / "configs" / "hard.yaml")
    spaces = sorted((root / "spaces").glob("*.yaml"))
    assert len(spaces) >= 5
    for p in spaces:
        assert load_space(p, demo if p.name == "demo.yaml" else basset).dims

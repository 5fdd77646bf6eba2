"""One registry per axis: a new weighting is one file plus one registration; unknown names are
refused when the config loads; what the config allows and what compare groups by come from them."""
import pytest

from conftest import run
from mtlsweep.config.errors import ConfigError
from mtlsweep.config.identity import FAMILY_LABELS, model_family
from mtlsweep.config.registry import COUPLINGS, FAMILIES, ORDERINGS, WEIGHTINGS, Entry
from mtlsweep.config.run import RunConfig, validate


def test_a_weighting_registered_from_one_file_trains(tiny_config, tmp_path):
    import toy_weighting
    WEIGHTINGS.register(Entry("half_first", "toy_weighting:HalfFirst", "the first task at half weight"))
    try:
        cfg = tiny_config(**{"schedule.weighting": "half_first", "train.epochs": 1})
        before = toy_weighting.HalfFirst.calls
        result = run(cfg, tmp_path / "r")
        assert toy_weighting.HalfFirst.calls > before and result.best_epoch == 1
        assert "half_first" in WEIGHTINGS.names
    finally:
        WEIGHTINGS.unregister("half_first")
    with pytest.raises(ConfigError, match="'half_first' is not a registered weighting"):
        tiny_config(**{"schedule.weighting": "half_first"})


@pytest.mark.parametrize("field,value,what", [
    ("schedule.order", "sideways", "ordering"), ("schedule.weighting", "pcgard", "weighting"),
    ("model.sharing.coupling", "l3", "coupling"), ("model.family", "transformer", "model family")])
def test_an_unknown_name_is_refused_when_the_config_loads(field, value, what):
    section, _, key = field.rpartition(".")
    tree: dict = {}
    node = tree
    for part in section.split("."):
        node = node.setdefault(part, {})
    node[key] = value
    with pytest.raises(ConfigError) as err:
        validate(tree)
    msg = str(err.value)
    assert f"{field}: {value!r} is not a registered {what}; allowed:" in msg and "\n" not in msg


def test_the_labels_compare_groups_by_come_from_the_registries():
    assert {e.label for e in COUPLINGS if e.label} <= set(FAMILY_LABELS)
    assert {e.name for e in FAMILIES if e.kind == "reference"} <= set(FAMILY_LABELS)
    soft = RunConfig().with_overrides({"model.sharing.shared_layers": 0, "model.sharing.coupling": "l2",
                                       "model.sharing.strength": 0.1})
    assert model_family(soft) == "soft"
    assert model_family(soft.with_overrides({"model.sharing.coupling": "l2_zero"})) == "control"
    assert model_family(soft.with_overrides({"model.sharing.strength": 0.0})) == "single"
    assert set(ORDERINGS.names) >= {"joint", "curriculum", "group_blocks"}


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="registered already"):
        WEIGHTINGS.register(Entry("equal", "somewhere:Else", "another equal"))


def test_an_installed_plugin_registers_through_its_entry_point(tiny_config, tmp_path, monkeypatch):
    """What a package installed beside mtlsweep does (a Ray worker on any node sees it too): one
    module and one entry point in the axis's group, no edit of mtlsweep."""
    (tmp_path / "plugin_weighting.py").write_text(
        "from mtlsweep.config.registry import Entry\n"
        "ENTRY = Entry('halve_first', 'toy_weighting:HalfFirst', 'the first task at half weight')\n")
    info = tmp_path / "plugin_weighting-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-weighting\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mtlsweep.weightings]\nhalve_first = plugin_weighting:ENTRY\n")
    assert "halve_first" not in WEIGHTINGS
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        cfg = tiny_config(**{"schedule.weighting": "halve_first", "train.epochs": 1})
        assert run(cfg, tmp_path / "r").best_epoch == 1 and "halve_first" in WEIGHTINGS.names
    finally:
        WEIGHTINGS.unregister("halve_first")


def test_the_architecture_pages_worked_example_trains_as_written(tiny_config, tmp_path, monkeypatch):
    """docs/architecture.md's weighting, its code and its registration line taken from the page."""
    import re
    from pathlib import Path
    page = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    example = page.split("## Worked example: adding a weighting", 1)[1]
    code, registration = re.findall(r"```python\n(.*?)```", example, re.S)[:2]
    (tmp_path / "loss_ratio_doc.py").write_text(code)
    entry = eval(registration.strip().rstrip(",").replace("mtlsweep.schedules.loss_ratio", "loss_ratio_doc"),
                 {"Entry": Entry})
    monkeypatch.syspath_prepend(str(tmp_path))
    WEIGHTINGS.register(entry)
    try:
        cfg = tiny_config(**{"schedule.weighting": "loss_ratio", "train.epochs": 2})
        result = run(cfg, tmp_path / "r")
        assert len(result.history) == 2 and all(h["train/loss"] == h["train/loss"] for h in result.history)
    finally:
        WEIGHTINGS.unregister("loss_ratio")

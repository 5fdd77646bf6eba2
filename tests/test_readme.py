"""The README's generated sections are what the code generates: never stale, never hand-edited."""
from pathlib import Path

from mtlsweep.app.readme import MARK, config_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_config_reference_is_current():
    text = README.read_text()
    start = MARK.format(name="config-reference", edge="start")
    end = MARK.format(name="config-reference", edge="end")
    block = text.split(start, 1)[1].split(end, 1)[0].strip()
    assert block == config_reference(), "run `mtlsweep readme` to regenerate the config reference"


def test_readme_names_the_two_setup_commands_and_ci_calls_make_test():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci


def test_ground_truth_table_is_what_the_study_wrote():
    from mtlsweep.app.readme import STUDY_RESULTS
    text = README.read_text()
    start, end = MARK.format(name="ground-truth", edge="start"), MARK.format(name="ground-truth", edge="end")
    block = text.split(start, 1)[1].split(end, 1)[0].strip()
    written = (README.parent / STUDY_RESULTS).read_text().strip()
    assert block == written, "run `python -m mtlsweep.studies.ground_truth --readme README.md` (or `mtlsweep readme`)"
    assert "| related | hard |" in block and "| unrelated | hard |" in block

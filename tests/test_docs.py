"""The site's generated blocks are what the code generates: never stale, never hand-edited; the
README stays short and names the two set-up commands CI runs."""
from pathlib import Path

from mtlsweep.app.docs import MARK, PAGES, STUDY_TABLE, cli_reference, config_reference

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def block(name: str) -> str:
    text = (DOCS / PAGES[name]).read_text()
    start, end = MARK.format(name=name, edge="start"), MARK.format(name=name, edge="end")
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def test_config_and_cli_references_are_current():
    assert block("config-reference") == config_reference(), "run `mtlsweep docs` to regenerate the config reference"
    assert block("cli-reference") == cli_reference(), "run `mtlsweep docs` to regenerate the CLI reference"
    assert "`--references`" in block("cli-reference") and "`model.arch.preset`" in block("config-reference")


def test_readme_is_short_names_the_two_setup_commands_and_ci_calls_make_test_and_builds_the_site():
    text = (REPO / "README.md").read_text()
    assert "make demo" in text and "make test" in text and len(text.splitlines()) <= 160
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci and "mkdocs build --strict" in (REPO / "Makefile").read_text()


def test_ground_truth_table_is_what_the_study_wrote():
    written = (DOCS / STUDY_TABLE).read_text().strip()
    assert block("ground-truth") == written, \
        "run `python -m mtlsweep.studies.ground_truth --page docs/results/ground-truth.md` (or `mtlsweep docs`)"
    assert "| related | hard |" in written and "| unrelated | hard |" in written


def test_every_page_of_the_site_is_in_its_navigation():
    import yaml

    def pages(nav):
        for item in nav:
            for v in (item.values() if isinstance(item, dict) else [item]):
                yield from (pages(v) if isinstance(v, list) else [v])
    nav = set(pages(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]))
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")} - {STUDY_TABLE}
    assert on_disk == nav, (on_disk - nav, nav - on_disk)

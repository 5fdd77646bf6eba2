"""The house's rooms and the arrows between them: every import, at module level or inside a
function, points to the room itself or to a room below it, in the order docs/architecture.md writes."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT_FOLDER = {"mtlsweep": "mtlsweep"}


def layers_from_docs() -> list[str]:
    text = (REPO / "docs" / "architecture.md").read_text()
    m = re.search(r"Layers, bottom to top: (.+?)\.\n", text)
    assert m, "docs/architecture.md must state the layer order ('Layers, bottom to top: ...')"
    return [x.strip(" `") for x in m.group(1).split("→")]


def rooms() -> dict[str, Path]:
    """mtlsweep.<room> -> its folder, from pyproject's package-dir."""
    import tomllib
    pkgdir = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {name: REPO / folder for name, folder in pkgdir.items()}


def imports_of(path: Path, package: str = "") -> list[tuple[int, str]]:
    """Every import of the file as an absolute module name; relative ones (``from .x import y``)
    resolved against ``package``, the dotted package the file belongs to."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                assert package, f"{path}: a relative import in a file of no package"
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([module] if module else []))
            if module in ("mtlsweep",) or (node.level and not node.module):   # from mtlsweep import plots
                out += [(node.lineno, f"{module}.{a.name}") for a in node.names]
            elif module:
                out += [(node.lineno, module)]
    return out


def room_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def test_every_arrow_points_down():
    order = layers_from_docs()
    rank = {f"mtlsweep.{r}" if r != "plots" else "mtlsweep.plots": i for i, r in enumerate(order)}
    rms = rooms()
    assert set(rms) - {"mtlsweep"} == {f"mtlsweep.{r}" for r in order if r != "plots"}, "docs/architecture.md order vs pyproject"
    bad = []
    for room, folder in rms.items():
        for f in sorted(folder.glob("*.py")):
            own = "mtlsweep.plots" if f == REPO / "mtlsweep" / "plots.py" else room
            if own == "mtlsweep":          # the root package: __init__ and the `python -m mtlsweep` entry
                continue
            for line, mod in imports_of(f, room):
                if not mod.startswith("mtlsweep"):
                    if mod.split(".")[0] in {"data", "models", "schedules", "training", "analysis", "search",
                                             "mlflow_server", "config", "app", "studies"}:
                        bad.append(f"{f.relative_to(REPO)}:{line}: imports {mod} (not under the mtlsweep root)")
                    continue
                target = room_of(mod)
                if target == own:
                    continue
                if target not in rank or own not in rank or rank[target] > rank[own]:
                    bad.append(f"{f.relative_to(REPO)}:{line}: {own} imports {mod} (upward)")
    assert not bad, "\n".join(bad)


def test_the_leaf_and_the_bottom_import_nothing_of_the_project():
    for f in [REPO / "mtlsweep" / "plots.py", *sorted((REPO / "config").glob("*.py"))]:
        mods = [m for _, m in imports_of(f, "mtlsweep.config" if f.parent.name == "config" else "mtlsweep")
                if m.startswith("mtlsweep")]
        allowed = "mtlsweep.config" if f.parent.name == "config" else None
        assert all(allowed and m.startswith(allowed) for m in mods), (f, mods)


def test_no_import_order_workarounds_in_the_rooms():
    for folder in rooms().values():
        for f in folder.glob("*.py"):
            assert "noqa: E402" not in f.read_text(), f


def test_relative_imports_are_walked_too(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from .couplings import x\nfrom . import arch\nfrom ..training import engine\n")
    assert [m for _, m in imports_of(f, "mtlsweep.models")] == [
        "mtlsweep.models.couplings", "mtlsweep.models.arch", "mtlsweep.training"]

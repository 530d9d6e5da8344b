"""The package's shape: no import cycles, dependencies pointing one way, and a command line that answers at once."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The installed top-level packages, each in the folder of its name.
PACKAGES = ("t2v_fast", "export", "flows", "benchmarks")
ENTRY_POINTS = ("export", "flows", "benchmarks")
HEAVY = ("torch", "diffusers", "transformers", "onnx", "onnxruntime", "prefect")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if path.stem == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, top_level_only: bool) -> set[str]:
    """Modules of the package that `name` imports (at module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    targets = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
    return targets


def test_no_import_cycles_between_modules():
    modules = _modules()
    graph = {name: sorted(_imports(name, path, True) & (set(modules) - {name})) for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in graph[node]:
            if state.get(target) == "open":
                cycle = [*trail[trail.index(target) :], target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*trail, target])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert len(graph) > 25, "the module scan found the package"


def test_library_modules_never_import_the_entry_points():
    for name, path in _modules().items():
        if name.startswith(ENTRY_POINTS) or name == "t2v_fast.cli":
            continue
        upward = sorted(i for i in _imports(name, path, False) if i.startswith(ENTRY_POINTS))
        assert not upward, f"{name} imports {upward}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["generate", "--help"],
        ["batch", "--help"],
        ["export", "--help"],
        ["bench", "--help"],
        ["check", "--help"],
        ["generate"],
    ],
    ids=["help", "version", "generate", "batch", "export", "bench", "check", "argument error"],
)
def test_help_version_and_argument_errors_import_nothing_heavy(argv):
    code = (
        "import sys\n"
        "from t2v_fast.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as exit:\n    code = exit.code\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), code)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    loaded, _, exit_code = result.stdout.strip().splitlines()[-1].rpartition(" ")
    assert loaded == "[]", f"imported {loaded} for {argv}"
    assert exit_code == ("2" if argv == ["generate"] else "0")


def test_every_public_name_imports():
    """`t2v_fast`'s names are imported on first use, from the modules its table names: each must be there."""
    import t2v_fast

    for name in t2v_fast.__all__:
        assert getattr(t2v_fast, name) is not None, name

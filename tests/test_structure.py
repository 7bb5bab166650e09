"""The package's import structure, checked on every run: the layer contract of ARCHITECTURE.md (import-linter,
configured in pyproject.toml) and no import cycle anywhere, imports inside functions included (grimp sees them;
TYPE_CHECKING-only imports are annotations and are left out); benchmarks use the test doubles of
agent_cir.testing, never the test modules; and those doubles stay out of ``import agent_cir``."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="import-linter (the dev extra) checks the structure")

ROOT = Path(__file__).resolve().parent.parent


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    class Graph:
        modules = {"a", "b", "c", "d"}
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, module):
            return self.edges.get(module, set())

    assert _cycles(Graph()) == [["a", "b", "c"]]


def test_no_import_cycles_including_imports_inside_functions():
    graph = grimp.build_graph("agent_cir", cache_dir=None, exclude_type_checking_imports=True)
    assert _cycles(graph) == []


def test_the_layer_contract_holds():
    done = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def _imports_of_tests(source: str) -> list[str]:
    """The imports of the ``tests`` package (or a module in it) in Python source, as written."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "tests"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "tests":
            found.append(node.module)
    return found


def test_the_tests_import_finder_finds_every_form():
    planted = (
        "import tests\nimport os, tests.fixtures.chat as chat\nfrom tests.fixtures import chat\n"
        "def f():\n    from tests.test_x import y\n"
        "import testsuite\nfrom testsuite import x\nfrom . import tests\nfrom agent_cir.testing import chat\n"
    )
    assert _imports_of_tests(planted) == ["tests", "tests.fixtures.chat", "tests.fixtures", "tests.test_x"]


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_benchmarks_do_not_import_the_tests(script):
    """Test doubles a benchmark needs live in agent_cir.testing: tests/ may change (or be absent) freely."""
    source = (ROOT / "benchmarks" / script).read_text(encoding="utf-8")
    assert _imports_of_tests(source) == [], f"benchmarks/{script} imports {_imports_of_tests(source)}"


def test_the_test_doubles_stay_out_of_import_agent_cir_and_import_no_heavy_library():
    """The library never loads agent_cir.testing, and the doubles import torch / transformers / pytest only
    inside the builders that need them."""
    modules = ["openai_server", "encoders", "hostile", "tiny_models", "tiny_clip", "tiny_llava"]
    code = (
        "import sys, agent_cir\n"
        "assert not [m for m in sys.modules if m.startswith('agent_cir.testing')], 'import agent_cir loaded the doubles'\n"
        + "".join(f"import agent_cir.testing.{name}\n" for name in modules)
        + "print(sorted({'torch', 'transformers', 'pytest'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", f"heavy modules imported at module level: {done.stdout.strip()}"

"""The package's import structure: layers in one direction, no cycles, few function-level
imports (each with its reason). Walks the source with ``ast``, so function-level imports
count too."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bagpiper_jax"

# Components (top-level modules and packages of bagpiper_jax), bottom layer first. A
# component imports only from its own layer or the ones before it.
LAYERS = (
    ("errors", "version"),
    ("config", "compat"),
    ("vocab", "sharding", "audio_io", "distributed", "locks"),
    ("model", "codec", "audio_encoder"),
    ("checkpoint",),
    ("data",),
    ("train", "generate"),
    ("convert",),
    ("eval",),
    ("cli",),
)
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}
ROOT = "bagpiper_jax"  # the package itself: the public facade (config, vocab, version)
MAX_FUNCTION_LEVEL_IMPORTS = 15


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(node: ast.AST, known: dict[str, Path]) -> list[str]:
    """The bagpiper_jax modules an import statement loads."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names]
    else:
        return []
    return [n for n in names if n == ROOT or n.startswith(ROOT + ".")]


def component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """Module -> modules it imports (anywhere in the file), and every function-level import
    as (file, line, source line)."""
    known = modules()
    graph, function_level = {}, []
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        graph[name] = {m for node in ast.walk(tree) for m in imported(node, known)}
        lines = path.read_text().splitlines()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        function_level.append(
                            (str(path.relative_to(PACKAGE.parent)), node.lineno, lines[node.lineno - 1])
                        )
    return graph, sorted(set(function_level))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_component_has_a_layer():
    assert {component(m) for m in modules()} - {ROOT} == set(LAYER_OF)


def test_no_import_cycles_between_modules_or_components():
    graph, _ = import_graph()
    assert find_cycle(graph) is None, f"module import cycle: {' -> '.join(find_cycle(graph))}"
    components = {}
    for module, targets in graph.items():
        components.setdefault(component(module), set()).update(
            component(t) for t in targets if component(t) != component(module)
        )
    cycle = find_cycle(components)
    assert cycle is None, f"package import cycle: {' -> '.join(cycle)}"


def test_imports_flow_down_the_layers():
    graph, _ = import_graph()
    wrong = []
    for module, targets in graph.items():
        if component(module) == ROOT:
            continue
        for target in targets:
            if target == ROOT:
                wrong.append(f"{module} imports the package facade {ROOT}; import the defining module")
            elif LAYER_OF[component(target)] > LAYER_OF[component(module)]:
                wrong.append(
                    f"{module} (layer {LAYER_OF[component(module)]}) imports {target} "
                    f"(layer {LAYER_OF[component(target)]})"
                )
    assert not wrong, "\n".join(wrong)


def test_function_level_imports_are_few_and_give_a_reason():
    _, function_level = import_graph()
    assert len(function_level) <= MAX_FUNCTION_LEVEL_IMPORTS, "\n".join(f"{f}:{n}" for f, n, _ in function_level)
    unexplained = [f"{f}:{n}: {line.strip()}" for f, n, line in function_level if "#" not in line]
    assert not unexplained, "function-level imports need a one-line reason (a trailing comment):\n" + "\n".join(
        unexplained
    )


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None

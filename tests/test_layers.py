"""The package's layers, kept by reading its imports (no module is imported).

Every `import` and `from ... import` of every module counts, relative or absolute, at the top or
inside a function (a lazy import is still an arrow: it only changes when the module loads). A
module may import its own layer (without a circle) and the layers below it, never one above.
docs/architecture.md says what each layer owns.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "clip_benchmark_diffusion"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

#: lowest first; "name.*" is a package and all its modules; a module named nowhere is a tool (the last layer)
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # messages, plain settings, checks and shipped assets: they import nothing above
    ("foundation", ("errors", "settings", "safety", "devices", "weights", "reference")),
    # the math: draws, noise processes, objectives (in that order; schedules never import objectives)
    ("math", ("draws", "schedules", "objectives")),
    # model families: one small interface, each family behind it (no backend finds checkpoints)
    ("backends", ("backends.*",)),
    # `--pretrained` -> a checked checkpoint folder -> the family's backend
    ("checkpoints", ("checkpoints",)),
    # where network calls go, and what an image's decision is
    ("strategies", ("strategies", "decisions")),
    # what a run wrote, and deciding again from it: below the scorer, so it never imports it
    ("journal", ("records", "replay")),
    # the classifier (the prompt cache and device table, the passes, the round loop): knows no host
    ("scorer", ("conditionings", "passes", "scorer")),
    # plain helpers of the integration: console lines, the papers' protocols, prompts, dataset checks,
    # learned bucket weights, the CLIP pre-filter, intervals
    ("helpers", ("console", "protocols", "prompts", "datasets", "weighting", "prefilter", "report.stats")),
    # the scorer as clip_benchmark's (model, transform, tokenizer), rankings through its arithmetic, ranks
    ("adapter", ("integration.adapter", "integration.rank_codec", "integration.ranks")),
    # everything else that touches clip_benchmark: flags, the run's shared state, the wrappers, file names,
    # and the start-up hook's entry point
    ("integration", ("integration", "integration.flags", "integration.outputs", "integration.run",
                     "integration.patches", "registration", "_autoregister")),
    # the command line's tools, probes, reports, benchmarks, the demo (everything else)
    ("tools", ()),
)

#: arrows that break the rules today, each with why it is still there; any other fails the test
KNOWN_ARROWS: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path], unresolved: list | None = None) -> set[str]:
    """The package's modules `name` imports (a `from X import Y` of a module Y counts as Y); an import of
    the package that names none of its modules is added to `unresolved`, if given."""
    parts = name.split(".") if name else []  # "" is the package itself
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module == PACKAGE or (node.module or "").startswith(PACKAGE + "."):
                target = node.module[len(PACKAGE) + 1:]
            else:
                continue
            for alias in node.names:
                child = f"{target}.{alias.name}" if target else alias.name
                found.add(child if child in modules else target)
                if unresolved is not None and child not in modules and target not in modules:
                    unresolved.append(f"{name}: {target or PACKAGE} ({alias.name})")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name[len(PACKAGE) + 1:])
    found.discard(name)
    return {module for module in found if module in modules}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(name: str) -> int:
    """Index of the module's layer in LAYERS (tools, the last, for any module named nowhere)."""
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            if name == member or (member.endswith(".*") and (name == member[:-2] or
                                                             name.startswith(member[:-1]))):
                return index
    return len(LAYERS) - 1


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def without_known(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {name: {t for t in targets if (name, t) not in KNOWN_ARROWS} for name, targets in graph.items()}


def test_the_layers_name_real_modules():
    modules = package_modules()
    for _, members in LAYERS:
        for member in members:
            assert member.removesuffix(".*") in modules, f"LAYERS names {member!r}, which is not a module"


def test_the_walk_sees_relative_absolute_and_lazy_imports():
    graph = import_graph()
    assert "errors" in graph["records"]  # `from .errors import ...` at the top
    assert "safety" in graph["settings"]  # `from .safety import check_numbers` inside a method
    assert "backends.base" in graph["backends"]  # TYPE_CHECKING
    assert "registration" in graph["probes.robustness"]  # `from ..registration import ...`


def test_every_import_of_the_package_names_one_of_its_modules():
    """A moved module's relative import that points nowhere (only found when that code runs) fails here."""
    modules, unresolved = package_modules(), []
    for name, path in modules.items():
        imports_of(name, path, modules, unresolved)
    assert not unresolved, "imports of modules that do not exist: " + "; ".join(unresolved)


def test_no_import_circle():
    found = circles(without_known(import_graph()))
    assert not found, "import circles (each group imports itself through the others): " + "; ".join(
        " <-> ".join(group) for group in found)


def test_no_arrow_from_a_lower_layer_to_a_higher_one():
    wrong = [f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
             for name, targets in sorted(without_known(import_graph()).items()) for target in sorted(targets)
             if layer_of(target) > layer_of(name)]
    assert not wrong, "imports from a lower layer to a higher one:\n" + "\n".join(wrong)


def test_the_known_arrows_still_exist():
    """An exception that is no longer needed is removed, so it cannot hide a new arrow."""
    graph = import_graph()
    stale = [arrow for arrow in KNOWN_ARROWS if arrow[1] not in graph.get(arrow[0], ())]
    assert not stale, f"KNOWN_ARROWS lists arrows that are gone: {stale}"

"""The package's layers, enforced (docs/architecture.md).

Every import in drkit/**/*.py is collected by walking the AST: at module level,
inside functions (lazy imports) and under ``if TYPE_CHECKING:``. An import may
point down a layer or stay inside its own unit; one pointing up a layer, or to a
sibling unit of its own layer, is a back-arrow. Imports that run (all but the
type-only ones) must also form no cycle between modules, lazy ones included.
A type-only import changes nothing at run time, so it counts for the direction
but not for cycles: a helper may name its caller's class in an annotation.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Top to bottom. Each layer is a tuple of units; a unit is a package or module
# name, and a module belongs to the unit with the longest name containing it (the
# root package, drkit/__init__.py, only itself). A module may import any module of
# its own unit or of a unit in a lower layer; units of one layer are independent.
LAYERS: list[tuple[str, ...]] = [
    ("drkit.__main__",),
    ("drkit.cli.main",),  # imports the command modules, which register on cli.group
    (
        "drkit.cli.commands_backup",
        "drkit.cli.commands_discover",
        "drkit.cli.commands_drill",
        "drkit.cli.commands_info",
        "drkit.cli.commands_machine",
        "drkit.cli.commands_ops",
    ),
    ("drkit.cli",),  # group, context, summary: shared by the commands
    ("drkit.actions",),  # the only layer combining the others
    ("drkit.drills",),  # images, containers, checks: actions/drill.py restores in them
    ("drkit.sources", "drkit.discover"),  # discover: facts a host's script reports, coverage
    ("drkit.remote", "drkit.providers"),
    ("drkit.policy",),  # its checks use locks' cap and repository's URL check
    ("drkit.catalog", "drkit.locks", "drkit.notify", "drkit.retention"),
    ("drkit.repository", "drkit.pipeline"),
    ("drkit.secrets", "drkit.signing"),
    ("drkit.keyfiles",),
    ("drkit.errors",),
    (
        "drkit",
        "drkit.durations",
        "drkit.ed25519",
        "drkit.logs",
        "drkit.paths",
        "drkit.redact",
        "drkit.retry",
        "drkit.schedule",
    ),
]

# Temporary exceptions (issue #22), each in a file another change held when the
# layers were first enforced; docs/architecture.md lists them under "Known
# exceptions". Remove an entry with its fix: one that no longer occurs fails the
# test, so this list only shrinks: a new back-arrow or cycle is fixed, not listed.
ALLOWED_BACK_ARROWS: set[tuple[str, str]] = set()
ALLOWED_CYCLES: list[frozenset[str]] = []


@dataclass(frozen=True)
class Import:
    importer: str
    path: str  # relative to the tree's root, for messages
    line: int
    target: str
    lazy: bool
    type_only: bool

    def where(self) -> str:
        how = " (lazy)" if self.lazy else " (type-only)" if self.type_only else ""
        return f"{self.path}:{self.line} imports {self.target}{how}"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str, modules: set[str]) -> str | None:
    """The module ``name`` loads: itself, else its longest prefix that is a module."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports_in(
    tree: ast.Module, name: str, is_package: bool, modules: set[str]
) -> list[tuple[int, str, bool, bool]]:
    """(line, module imported, lazy, type-only) for each import of a module in ``modules``."""
    found: list[tuple[int, str, bool, bool]] = []

    def visit(node: ast.AST, lazy: bool, type_only: bool) -> None:
        targets: list[str] = []
        line = 0
        if isinstance(node, ast.Import):
            line = node.lineno
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            line = node.lineno
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            # ``from a import b``: the module a.b if there is one, else a itself.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        for target in dict.fromkeys(targets):
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != name:
                found.append((line, resolved, lazy, type_only))
        lazy = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, lazy, True)
            for child in node.orelse:
                visit(child, lazy, type_only)
            return
        for inner in ast.iter_child_nodes(node):
            visit(inner, lazy, type_only)

    visit(tree, False, False)
    return found


def collect_imports(root: Path, package: str) -> tuple[set[str], list[Import]]:
    """Every module of ``package`` under ``root``, and every import of one by another."""
    files = {_module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    modules = set(files)
    found: list[Import] = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        rel = str(path.relative_to(root))
        for line, target, lazy, type_only in _imports_in(
            tree, name, path.name == "__init__.py", modules
        ):
            found.append(Import(name, rel, line, target, lazy, type_only))
    return modules, found


def _unit(module: str, layers: list[tuple[str, ...]], package: str) -> tuple[int, str] | None:
    best: tuple[int, str] | None = None
    for rank, layer in enumerate(layers):
        for unit in layer:
            inside = module == unit or (unit != package and module.startswith(unit + "."))
            if inside and (best is None or len(unit) > len(best[1])):
                best = (rank, unit)
    return best


def _cycles(modules: set[str], edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for start in sorted(modules):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def check_layers(
    root: Path,
    package: str,
    layers: list[tuple[str, ...]],
    allowed_back_arrows: set[tuple[str, str]] | None = None,
    allowed_cycles: list[frozenset[str]] | None = None,
) -> list[str]:
    """Every problem found, one message each (none: the imports follow ``layers``)."""
    allowed_back_arrows = allowed_back_arrows or set()
    allowed_cycles = allowed_cycles or []
    modules, imports = collect_imports(root, package)
    problems: list[str] = []
    units = {m: _unit(m, layers, package) for m in sorted(modules)}
    for module, unit in units.items():
        if unit is None:
            problems.append(f"{module} is in no layer: add it to LAYERS (docs/architecture.md)")
    seen_exceptions: set[tuple[str, str]] = set()
    for imp in imports:
        source, target = units[imp.importer], units[imp.target]
        if source is None or target is None or source[1] == target[1] or target[0] > source[0]:
            continue
        if (imp.importer, imp.target) in allowed_back_arrows:
            seen_exceptions.add((imp.importer, imp.target))
            continue
        what = "a sibling in its layer" if target[0] == source[0] else "a higher layer"
        problems.append(
            f"back-arrow: {imp.where()}: {source[1]} may not import {target[1]}, {what}"
        )
    for importer, imported in sorted(allowed_back_arrows - seen_exceptions):
        problems.append(f"allowed back-arrow {importer} -> {imported} no longer occurs: remove it")
    edges: dict[str, set[str]] = {}
    for imp in imports:
        if not imp.type_only:
            edges.setdefault(imp.importer, set()).add(imp.target)
    components = _cycles(modules, edges)
    for component in components:
        if frozenset(component) in allowed_cycles:
            continue
        inside = [i for i in imports if not i.type_only and {i.importer, i.target} <= component]
        problems.append(
            f"import cycle between {', '.join(sorted(component))}: "
            + "; ".join(i.where() for i in sorted(inside, key=lambda i: (i.path, i.line)))
        )
    for allowed in allowed_cycles:
        if allowed not in [frozenset(c) for c in components]:
            problems.append(
                f"allowed cycle {', '.join(sorted(allowed))} no longer occurs: remove it"
            )
    return problems


def test_drkit_imports_follow_the_layers() -> None:
    problems = check_layers(ROOT, "drkit", LAYERS, ALLOWED_BACK_ARROWS, ALLOWED_CYCLES)
    assert not problems, "\n".join(problems)


def test_the_checker_reports_back_arrows_cycles_and_strays(tmp_path: Path) -> None:
    """Proof that the check can fail: a small package with one of each mistake."""
    files = {
        "pkg/__init__.py": "",
        "pkg/top.py": "from pkg.low import helper\n",
        "pkg/low.py": "def helper():\n    from pkg import top\n    return top\n",
        "pkg/side.py": "import pkg.low\n",
        "pkg/core/__init__.py": "",
        "pkg/core/a.py": "from . import b\n",
        "pkg/core/b.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from pkg.core.c import C\n"
            "def f():\n    from pkg.core import a\n"
        ),
        "pkg/core/c.py": "from pkg.core.b import f\n",
        "pkg/stray.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    layers = [("pkg.top",), ("pkg.low", "pkg.side"), ("pkg.core", "pkg")]
    problems = check_layers(
        tmp_path, "pkg", layers, {("pkg.core.a", "pkg.top")}, [frozenset({"pkg.x", "pkg.y"})]
    )
    assert sorted(problems) == sorted(
        [
            "back-arrow: pkg/low.py:2 imports pkg.top (lazy): pkg.low may not import pkg.top, "
            "a higher layer",
            "back-arrow: pkg/side.py:1 imports pkg.low: pkg.side may not import pkg.low, "
            "a sibling in its layer",
            "import cycle between pkg.low, pkg.top: pkg/low.py:2 imports pkg.top (lazy); "
            "pkg/top.py:1 imports pkg.low",
            "import cycle between pkg.core.a, pkg.core.b: pkg/core/a.py:1 imports pkg.core.b; "
            "pkg/core/b.py:5 imports pkg.core.a (lazy)",
            "pkg.stray is in no layer: add it to LAYERS (docs/architecture.md)",
            "allowed back-arrow pkg.core.a -> pkg.top no longer occurs: remove it",
            "allowed cycle pkg.x, pkg.y no longer occurs: remove it",
        ]
    )


DOC = ROOT / "docs" / "architecture.md"


def test_architecture_doc_names_only_existing_files() -> None:
    named = set(re.findall(r"drkit/[\w/]*\w\.py", DOC.read_text()))
    assert named, "docs/architecture.md names the files of its call chains"
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_architecture_doc_names_every_layer_unit() -> None:
    text = DOC.read_text()
    for layer in LAYERS:
        for unit in layer:
            path = unit.replace(".", "/")
            if unit == "drkit":
                shown = "drkit/__init__.py"
            else:
                shown = f"{path}/" if (ROOT / path).is_dir() else f"{path}.py"
            assert shown in text, f"docs/architecture.md does not place {shown} in a layer"

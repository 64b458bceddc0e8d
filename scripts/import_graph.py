"""ggtool's import graph: which module imports which (at module level and inside functions), by layer.

    python scripts/import_graph.py            # summary: arrows against the layering, function-local imports
    python scripts/import_graph.py --dot      # the graph in Graphviz dot (solid: module level, dashed: local)
    python scripts/import_graph.py --edges    # every ggtool -> ggtool arrow, one per line

Layers, top to bottom (README "How it is built"): cli -> commands -> shared modules -> llama/ -> errors and
the package's constants. A command
is a module `cli.py` dispatches to and that does the command's work. `plan/` is a shared library (the placement
model, search and exports that run, modelfile, publish and cli's `plan` command all use), not a command. An arrow is *upward* when
a lower layer imports a higher one, *sideways* when one command imports another; `ladder` chains the
other commands by design, and the modules of one package (plan/*, families/*, llama/*) may import each
other. `fixtures` (test builders) should be imported by tests, bench and scripts only. Imports under
`if TYPE_CHECKING:` are type hints, not arrows. Reads the source with `ast` only.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ggtool"
COMMANDS = {"convert", "inspect", "verify", "run", "imatrix", "quantize", "quality", "ladder", "ollama", "lmstudio",
            "hub"}
CHAINS = {"ladder"}  # commands that run other commands by design
LAYERS = {"cli": 0, "command": 1, "shared": 2, "llama": 3, "base": 4}
BASE = {"errors", "__init__"}  # below everything: the one error type, the package's constants
TEST_BUILDERS = {"fixtures"}  # random checkpoints and trained tokenizers for tests, bench and the training script


@dataclass(frozen=True)
class Edge:
    src: str  # importing module, dotted, relative to the package ("plan.memory")
    dst: str  # imported ggtool module
    local: bool  # inside a function
    line: int


def unit(module: str) -> str:
    """The unit a module belongs to: its top-level name (`plan.memory` -> `plan`, `families.olmoe` -> `families`)."""
    return module.split(".")[0]


def layer(module: str) -> str:
    u = unit(module)
    if u == "cli":
        return "cli"
    if u in COMMANDS:
        return "command"
    if u == "llama":
        return "llama"
    if u in BASE:
        return "base"
    return "shared"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def resolve(current: str, is_package: bool, level: int, target: str | None) -> str | None:
    """The dotted ggtool module a `from ...target import` names, relative to the package; None if outside it."""
    if level == 0:
        if target and (target == "ggtool" or target.startswith("ggtool.")):
            return target[len("ggtool."):] if target != "ggtool" else "__init__"
        return None
    base = current.split(".") if current != "__init__" else []
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)] if level > 1 else base
    name = ".".join([*base, *([target] if target else [])])
    return name or "__init__"


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def scan(root: Path = PACKAGE) -> tuple[list[str], list[Edge], Counter]:
    """Modules, ggtool -> ggtool edges, and function-local import statements per module (any target)."""
    modules, edges, local_count = [], [], Counter()
    known = {module_name(p, root) for p in root.rglob("*.py")}
    for path in sorted(root.rglob("*.py")):
        mod = module_name(path, root)
        modules.append(mod)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _is_type_checking(child):
                    continue
                fn = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    if in_function:
                        local_count[mod] += 1
                    targets: list[str] = []
                    if isinstance(child, ast.Import):
                        targets = [r for a in child.names if (r := resolve(mod, is_package, 0, a.name))]
                    else:
                        base = resolve(mod, is_package, child.level, child.module)
                        if base is not None:
                            # `from . import x` / `from .pkg import mod` may name submodules
                            subs = [f"{base}.{a.name}" if base != "__init__" else a.name for a in child.names]
                            targets = [s for s in subs if s in known] or [base]
                    for t in dict.fromkeys(targets):
                        if t != mod:
                            edges.append(Edge(mod, t, in_function, child.lineno))
                visit(child, fn)

        visit(tree, False)
    return modules, edges, local_count


def against_layering(edges: list[Edge]) -> list[tuple[str, Edge]]:
    """(kind, edge) for every upward arrow and every sideways arrow between commands."""
    out = []
    for e in edges:
        a, b = layer(e.src), layer(e.dst)
        if unit(e.src) == unit(e.dst):
            continue  # within one package
        if unit(e.dst) in TEST_BUILDERS:
            out.append(("test builders imported by the package", e))
        elif LAYERS[b] < LAYERS[a]:
            out.append(("upward", e))
        elif a == b == "command":
            out.append(("sideways (ladder chains commands)" if unit(e.src) in CHAINS else "sideways", e))
    return out


def depth(modules: list[str], edges: list[Edge]) -> int:
    """Longest chain of module-level and local imports (modules in a cycle count once)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        graph.setdefault(e.src, set()).add(e.dst)
    memo: dict[str, int] = {}

    def longest(m: str, stack: frozenset) -> int:
        if m in memo:
            return memo[m]
        best = 1 + max((longest(n, stack | {m}) for n in graph.get(m, ()) if n not in stack), default=0)
        memo[m] = best
        return best

    return max(longest(m, frozenset()) for m in graph)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dot", action="store_true", help="print the graph in Graphviz dot")
    ap.add_argument("--edges", action="store_true", help="print every arrow")
    ap.add_argument("--root", type=Path, default=PACKAGE, help="package folder (default: this checkout's ggtool/)")
    args = ap.parse_args(argv)
    modules, edges, local = scan(args.root)
    if args.dot:
        print("digraph ggtool {\n  rankdir=TB;")
        for e in sorted(set((e.src, e.dst, e.local) for e in edges)):
            print(f'  "{e[0]}" -> "{e[1]}"{" [style=dashed]" if e[2] else ""};')
        print("}")
        return 0
    if args.edges:
        for e in sorted(edges, key=lambda e: (e.src, e.dst)):
            print(f"{e.src} -> {e.dst}{'  (local, line %d)' % e.line if e.local else ''}")
        return 0
    bad = against_layering(edges)
    print(f"{len(modules)} modules, {len({(e.src, e.dst) for e in edges})} ggtool -> ggtool arrows, "
          f"longest import chain {depth(modules, edges)} modules")
    print(f"function-local import statements: {sum(local.values())} "
          f"(of which of ggtool modules: {sum(e.local for e in edges)})")
    library = {m: n for m, n in local.items() if m != "cli" and unit(m) not in TEST_BUILDERS}
    print(f"  in library code (without cli's lazy command imports and the test builders): {sum(library.values())}")
    for mod, n in local.most_common():
        print(f"  {n:3d}  {mod}")
    print(f"arrows against the layering (cli -> commands -> shared -> llama/ -> errors): {len(bad)}")
    for kind, e in sorted(bad, key=lambda x: (x[0], x[1].src, x[1].dst)):
        print(f"  {kind:36s} {e.src} -> {e.dst}{' (local)' if e.local else ''}  line {e.line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

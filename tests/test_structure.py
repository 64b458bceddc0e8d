"""The package's shape: imports go one way (cli -> commands -> shared -> llama/ -> errors), llama_cpp and gguf-py's
reader each have one home, and importing ggtool starts nothing in llama.cpp."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ggtool"


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _sources() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")}


def test_imports_go_one_way():
    g = _import_graph()
    _, edges, local = g.scan()
    against = g.against_layering(edges)
    # only ladder, which chains the commands by design, imports other commands
    assert [(k, e.src, e.dst) for k, e in against if e.src != "ladder"] == []
    assert {e.dst for k, e in against} <= {"convert", "imatrix", "quantize", "quality"}
    # function-local imports left in library code: a family and its numpy reference (which reads the family's
    # tables: a cycle) and the optional `verify` extra (torch, transformers)
    library = {m: n for m, n in local.items() if m != "cli" and g.unit(m) not in g.TEST_BUILDERS}
    assert library == {"families.metis": 2, "families.ssmoelm": 1, "families.reference": 2}, library


def test_llama_cpp_and_the_gguf_reader_have_one_home_each():
    for path, text in _sources().items():
        if not path.startswith("ggtool/llama/"):
            assert not re.search(r"^\s*(import|from) llama_cpp\b", text, re.M), path
        if path != "ggtool/gguf_in.py":
            assert "GGUFReader(" not in text, path


def test_importing_the_package_starts_nothing_in_llama_cpp():
    code = ("import pkgutil, importlib, ggtool\n"
            "for m in pkgutil.walk_packages(ggtool.__path__, 'ggtool.'):\n"
            "    if not m.name.endswith(('__main__', 'llama.build')):\n"
            "        importlib.import_module(m.name)\n"
            "from ggtool.llama import backend\n"
            "assert not backend._ready, 'llama.cpp started at import'\n"
            "print('modules', len(list(pkgutil.walk_packages(ggtool.__path__, 'ggtool.'))))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) > 40


def test_no_module_shadows_the_standard_library_where_scripts_run():
    # ggtool/llama/source.py and build.py run as scripts (`make install`): their folder is then sys.path[0], so a
    # module there named like a standard-library one (types, enum...) replaces it for the whole interpreter
    shadowing = [p.name for p in (PACKAGE / "llama").glob("*.py") if p.stem in sys.stdlib_module_names]
    assert shadowing == []

"""The layer contract of DESIGN.md, checked by tools rather than by eye.

``lint-imports`` (import-linter, configured in pyproject.toml) checks that imports
point down the layers, that no private module is imported from outside its parent
package, that sibling packages import no circle, and that the core never imports
Ray. The test below adds what it does not check: no module imports another
package's underscore *names* (``from ..storage.x import _helper``).
"""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "shardann"


def _package_of(module):
    """The first-level package of a dotted shardann module ("shardann.storage"), or
    "shardann" for the top-level (core) modules."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else "shardann"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path, path.name == "__init__.py"


def _resolve(module, is_package, node):
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_module_imports_another_packages_private_names():
    bad = []
    for module, path, is_package in _modules():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _resolve(module, is_package, node)
            if not source.startswith("shardann"):
                continue
            if _package_of(source) == _package_of(module) or _package_of(source) == "shardann":
                continue  # inside one package, or the core's names (usable everywhere)
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    bad.append(f"{module} imports {source}.{alias.name} (l.{node.lineno})")
    assert not bad, "imports of another package's private names:\n" + "\n".join(bad)


def test_import_contracts_hold():
    lint = pathlib.Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (it is in the test extra)")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

"""The package's layers import downwards only: low layers never reach into the ones built on them.

io (file formats) < models (networks) < objectives (losses over models) < ... < jobs (assembly) < stages (CLIs).
Checked on the source (every import statement, function-level ones included), so a violation fails here before it
makes an import cycle somewhere else.
"""

from __future__ import annotations

import ast
from pathlib import Path

from smk import ROOT

PACKAGE = ROOT / "src" / "pipeline3d"
# layer -> the subpackages it must never import
FORBIDDEN = {
    "io": {"data", "models", "objectives", "embed", "tokens", "train", "eval", "jobs", "stages", "report"},
    "models": {"objectives", "embed", "jobs", "stages", "data", "eval", "report"},
    "objectives": {"embed", "jobs", "stages", "eval", "report"},
    "tokens": {"models", "objectives", "embed", "jobs", "stages", "eval", "report"},
    "data": {"models", "objectives", "jobs", "stages", "report"},
    "train": {"jobs", "stages", "embed", "eval", "report"},
    "embed": {"jobs", "stages", "report"},
    "eval": {"jobs", "stages", "report"},
    "jobs": {"stages"},
}


def imported_subpackages(path: Path) -> set[str]:
    """The pipeline3d subpackages a module imports (absolute or relative)."""
    module = path.relative_to(PACKAGE.parent).with_suffix("").parts  # ("pipeline3d", "io", "shards")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(module[: -node.level])
                target = base + (node.module.split(".") if node.module else [])
                names = [target + [alias.name] for alias in node.names] if not node.module else [target]
            else:
                names = [(node.module or "").split(".")]
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        else:
            continue
        for parts in names:
            if len(parts) > 1 and parts[0] == "pipeline3d":
                found.add(parts[1])
    return found


def test_layers_import_downwards_only() -> None:
    violations = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            bad = imported_subpackages(path) & forbidden
            if bad:
                violations.append(f"{path.relative_to(PACKAGE)} imports {sorted(bad)}")
    assert not violations, "\n".join(violations)


def test_the_check_sees_relative_and_function_level_imports(tmp_path) -> None:
    module = PACKAGE / "io" / "shards.py"
    assert {"io", "versions"} <= imported_subpackages(module)
    assert "embed" in imported_subpackages(PACKAGE / "jobs" / "align_text3d.py")

"""README.md's Layout section names every package folder and top-level module of src/pipeline3d (no drift)."""

from __future__ import annotations

import re

from smk import ROOT

PACKAGE = ROOT / "src" / "pipeline3d"


def layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def test_every_package_folder_is_in_the_layout_section() -> None:
    block = layout_block()
    listed = set(re.findall(r"^\s+(\w+)/\s", block, flags=re.M))
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders - listed == set(), "README.md Layout lacks these src/pipeline3d folders"
    assert listed - folders == set(), "README.md Layout names folders src/pipeline3d does not have"


def test_every_top_level_module_is_in_the_layout_section() -> None:
    block = layout_block()
    modules = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    missing = {m for m in modules if not re.search(rf"(?<![\w/]){re.escape(m)}\b", block)}
    assert missing == set(), "README.md Layout lacks these top-level modules of src/pipeline3d"

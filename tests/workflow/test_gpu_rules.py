"""A rule declares a GPU exactly when its job puts a model on a device (static listing, no GPU needed).

"Puts a model on a device" = the stage module, or a pipeline3d module it imports (transitively), calls
``device.job_device(...)`` or imports the training loop's ``train`` (which picks the device through
``train.distributed.setup`` -> ``job_device``). That every input then reaches that device is checked on the CPU by
the ``meta`` tests (tests/unit/test_device_policy.py and the stage tests that use it).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "pipeline3d"
USES_DEVICE = (re.compile(r"\bjob_device\("), re.compile(r"from \S*train\.loop import [^\n]*\btrain\b"))


def _module_file(name: str) -> Path | None:
    base = PKG.joinpath(*name.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(name: str) -> set[str]:
    """pipeline3d modules ``name`` imports (``from X import y`` counts y when y is itself a module)."""
    path = _module_file(name)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            parts = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(parts + ([node.module] if node.module else []))
            if target.startswith("pipeline3d"):
                out.add(target)
                out.update(f"{target}.{a.name}" for a in node.names if _module_file(f"{target}.{a.name}"))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("pipeline3d"))
    return {m for m in out if _module_file(m)}


def _device_users(stage: str) -> list[str]:
    seen, todo = set(), [f"pipeline3d.stages.{stage}"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_imports(name))
    seen.discard("pipeline3d.device")  # defines job_device, does not pick one
    return sorted(m for m in seen if any(p.search(_module_file(m).read_text()) for p in USES_DEVICE))


def _rules() -> dict[str, tuple[str | None, bool]]:
    """rule name -> (stage module it runs, whether its resources declare a GPU)."""
    rules = {}
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=\s*(?:local)?rule \w+:)", smk.read_text()):
            head = re.match(r"\s*(?:local)?rule (\w+):", block)
            if head:
                stage = re.search(r"pipeline3d\.stages\.(\w+)", block)
                rules[head.group(1)] = (stage.group(1) if stage else None, bool(re.search(r"\bgpu\s*=", block)))
    return rules


def test_a_rule_declares_a_gpu_exactly_when_its_job_uses_a_device():
    rules = _rules()
    assert {"pretrain_encoder", "embed_image", "eval_cpac", "report", "build_cache_shard"} <= set(rules)
    wrong = []
    for rule, (stage, gpu) in sorted(rules.items()):
        users = _device_users(stage) if stage else []
        if gpu != bool(users):
            wrong.append(f"{rule}: gpu declared={gpu}, device users={users or 'none'}")
    assert not wrong, "\n".join(wrong)


def test_the_static_listing_sees_both_ways_a_job_picks_its_device():
    assert "pipeline3d.jobs.embed_image" in _device_users("embed_image")  # job_device() in its job
    assert "pipeline3d.jobs.finetune" in _device_users("finetune_episode")  # the training loop, two hops
    assert _device_users("report") == [] and _device_users("build_cache_shard") == []


def test_parsing_the_workflow_imports_no_torch():
    """Every pipeline3d import of the Snakefile and rule files, in a fresh interpreter: torch stays out (a dry run
    of a 50k-shape config must not pay for it)."""
    import subprocess
    import sys

    sources = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    imports = sorted(
        {
            line.strip().split("  #")[0]
            for path in sources
            for line in path.read_text().splitlines()
            if re.match(r"\s*(from|import) pipeline3d", line)
        }
    )
    assert any("logging_env" in line for line in imports)
    code = "\n".join(imports) + "\nimport sys\nsys.exit('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, "the parse imports torch through one of:\n" + "\n".join(imports) + proc.stderr

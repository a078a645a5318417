"""Snakemake's own linter, as a gate: any lint fails the test except the two this project accepts on purpose."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from smk import smk_env

# Accepted lints, and why:
# - Python-stage rules carry no conda:/container: directive: they run in the project env (envs/pipeline3d.yaml or
#   ci/setup.sh's venv) that also runs Snakemake (style anchors D4).
# - Rules call `{PY}` (the interpreter running Snakemake, defined in common.smk) rather than a bare `python` that may be
#   another one on PATH. It must not be a param: the venv's path would then be provenance, and moving a checkout
#   would rerun everything.
ACCEPTED = (
    "Specify a conda environment or container for each rule.",
    "Shell command directly uses variable PY from outside of the rule",
)

# `snakemake --lint json` is broken in Snakemake 9.27: the CLI drops the format argument (prints text), and the API's
# JSON writer chokes on the rules' snakefile objects (LocalSourceFile). So the JSON comes from the API call the CLI
# makes, with json=True and those objects written as their path.
_LINT_JSON = """
import functools, json
json.dumps = functools.partial(json.dumps, default=str)
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, ResourceSettings
with SnakemakeApi(OutputSettings(quiet=True)) as api:
    api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path("Snakefile")).lint(json=True)
"""


def lint_json(workdir: Path) -> dict:
    cli = subprocess.run(
        ["snakemake", "--lint", "json"], cwd=workdir, env=smk_env(workdir), capture_output=True, text=True
    )
    try:
        return json.loads(cli.stdout)
    except json.JSONDecodeError:
        pass
    api = subprocess.run(
        [sys.executable, "-c", _LINT_JSON], cwd=workdir, env=smk_env(workdir), capture_output=True, text=True
    )
    assert api.returncode == 0, api.stderr[-3000:]
    return json.loads(api.stdout[api.stdout.index("{") :])


def unexpected_lints(report: dict) -> list[str]:
    return [
        f"rule {item['for']['rule']}: {lint['title']}"
        for item in report["rules"]
        for lint in item["lints"]
        if not lint["title"].startswith(ACCEPTED)
    ]


def test_no_lints_but_the_accepted_ones(workdir: Path) -> None:
    report = lint_json(workdir)
    assert report["snakefiles"] in (None, []), report["snakefiles"]
    assert not unexpected_lints(report), "\n".join(unexpected_lints(report))


def test_lint_gate_catches_a_rule_without_log(workdir: Path) -> None:
    """The gate is live: a rule without a log directive is reported and not filtered away."""
    (workdir / "workflow" / "rules" / "broken.smk").write_text(
        'rule broken_rule:\n    output:\n        "results/broken.txt",\n    shell:\n        "touch {output}"\n'
    )
    snakefile = workdir / "Snakefile"
    snakefile.write_text(snakefile.read_text() + '\n\ninclude: "workflow/rules/broken.smk"\n')

    assert unexpected_lints(lint_json(workdir)) == ["rule broken_rule: No log directive defined"]

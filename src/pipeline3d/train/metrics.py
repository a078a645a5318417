"""``metrics.jsonl``: one JSON object per logged step, appended with a single ``write`` per line.

A line is written with one ``os.write`` on an ``O_APPEND`` descriptor, so a kill never leaves half a line among
finished ones (at worst a truncated last line, which readers skip). On resume the lines past the checkpoint's step
are dropped, because those steps are about to be redone, so the file always tells one consistent history.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..io.atomic import write_text


def append(path: Path, record: dict[str, Any]) -> None:
    data = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read(path: Path) -> list[dict[str, Any]]:
    """All complete records (a torn last line from a kill is ignored)."""
    records = []
    if not Path(path).exists():
        return records
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_after(path: Path, step: int, log: logging.Logger) -> None:
    """Keep only records with ``step <= step`` (rewritten atomically; nothing to do if the file is absent)."""
    path = Path(path)
    if not path.exists():
        return
    records = read(path)
    kept = [r for r in records if int(r.get("step", 0)) <= step]
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
    if text != path.read_text(encoding="utf-8"):  # also drops a torn last line the next append would extend
        write_text(path, text)
        log.info("metrics %s: dropped %d line(s) past step %d (they are redone)", path, len(records) - len(kept), step)

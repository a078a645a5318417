"""Atomic writes and seed derivation."""

import numpy as np
import pandas as pd
import pytest

from pipeline3d.io import atomic
from pipeline3d.rng import rng_for, stable_hash


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert atomic.json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_parquet_is_deterministic_and_keeps_metadata(tmp_path):
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    atomic.write_parquet(tmp_path / "1.parquet", df, metadata={"note": "hi"})
    atomic.write_parquet(tmp_path / "2.parquet", df, metadata={"note": "hi"})
    assert (tmp_path / "1.parquet").read_bytes() == (tmp_path / "2.parquet").read_bytes()
    import pyarrow.parquet as pq

    assert pq.read_schema(tmp_path / "1.parquet").metadata[b"note"] == b"hi"


def test_rng_depends_on_seed_stage_and_key_only():
    a = rng_for(0, "cache", "ds/chair/1").random(4)
    assert np.array_equal(a, rng_for(0, "cache", "ds/chair/1").random(4))
    assert not np.array_equal(a, rng_for(1, "cache", "ds/chair/1").random(4))
    assert not np.array_equal(a, rng_for(0, "splits", "ds/chair/1").random(4))
    assert not np.array_equal(a, rng_for(0, "cache", "ds/chair/2").random(4))


def test_stable_hash_is_fixed():
    # A fixed value: the hash must never change between processes or releases (it assigns shards).
    assert stable_hash("x") == int.from_bytes(__import__("hashlib").sha256(b"x").digest()[:8], "little")


def test_atomic_files_get_normal_permissions(tmp_path):
    atomic.write_text(tmp_path / "a.txt", "x")
    mode = (tmp_path / "a.txt").stat().st_mode & 0o777
    assert mode == 0o666 & ~atomic._UMASK


def test_a_writer_killed_with_sigkill_leaves_a_temp_the_next_write_removes(tmp_path):
    """SIGKILL cannot be cleaned up after: the temp stays (never the final name) until the output is written again;
    temps of other outputs in the folder are not touched."""
    import subprocess
    import sys

    out, other = tmp_path / "shard-0001.h5", tmp_path / "shard-0001.h5.x"
    script = (
        "import os, signal, sys\n"
        "from pipeline3d.io.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    for path in (out, other):
        killed = subprocess.run([sys.executable, "-c", script, str(path)], timeout=60)
        assert killed.returncode == -9
    assert not out.exists() and len(atomic.stale_temps(out)) == 1 and len(atomic.stale_temps(other)) == 1

    atomic.write_bytes(out, b"whole")
    assert out.read_bytes() == b"whole" and atomic.stale_temps(out) == []
    assert len(atomic.stale_temps(other)) == 1  # another output's leftovers wait for that output's own rerun

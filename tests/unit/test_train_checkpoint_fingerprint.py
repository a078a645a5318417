"""The resume fingerprint of a training job covers its inputs: rewritten inputs mean a fresh start, not a resume."""

import os

from pipeline3d.train.checkpoint import run_fingerprint


def test_fingerprint_follows_params_and_rewritten_inputs_only(tmp_path):
    a, b = tmp_path / "shard-0.h5", tmp_path / "weights.safetensors"
    a.write_bytes(b"cache")
    b.write_bytes(b"encoder")
    files = {"shards": [str(a)], "weights": str(b)}
    params = {"seed": 0, "k": 1}
    first = run_fingerprint(params, files)
    assert run_fingerprint(dict(reversed(list(params.items()))), dict(reversed(list(files.items())))) == first
    assert run_fingerprint({**params, "k": 5}, files) != first
    # a rerun of the upstream job rewrites the file (same bytes even): the old checkpoint is not this run's
    stat = b.stat()
    b.write_bytes(b"encoder")
    os.utime(b, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert run_fingerprint(params, files) != first

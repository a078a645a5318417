"""Optional W&B mirror of the training log: offline runs stay local; disabled never imports wandb."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline3d.train import TrainConfig, metrics, train
from pipeline3d.train.wandb_sink import metrics_sinks
from train_toy import ToyData, make_objective, seed_globals

CFG = TrainConfig(steps=4, batch_size=4, lr=0.01, checkpoint_every=4, log_every=2, seed=3)


def _history(path: Path) -> list[dict[str, float]]:
    """The history rows of an offline ``run-<id>.wandb`` file.

    The file is a LevelDB-style log: a 7-byte W&B header, then 32 KiB blocks of chunks (crc32 u32, length u16,
    type u8: 1 full, 2 first, 3 middle, 4 last), each record a protobuf ``Record``.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, pending, rows = path.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items})
    return rows


def _params(enabled: bool, mode: str = "offline") -> dict:
    return {"seed": 0, "logging": {"wandb": {"enabled": enabled, "project": "pipeline3d", "mode": mode}}}


def test_offline_run_mirrors_every_record_without_network(tmp_path, no_network, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    state = tmp_path / "state"
    seed_globals(11)
    sinks = metrics_sinks(_params(True), state, name="toy")
    train(make_objective(0, noise=False), ToyData(seed=1), CFG, state, config_hash="toy", sinks=sinks)
    records = metrics.read(state / "metrics.jsonl")
    assert [r["step"] for r in records] == [2, 4]
    runs = list((state / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))  # the offline record `wandb sync` uploads
    history = _history(next(runs[0].glob("run-*.wandb")))
    assert [row["_step"] for row in history] == [2, 4]
    for row, record in zip(history, records):
        assert {k: row[k] for k in record if k != "step"} == pytest.approx(
            {k: v for k, v in record.items() if k != "step"}
        )


def test_disabled_never_imports_wandb(tmp_path):
    code = (
        "import sys\n"
        "from pipeline3d.train.wandb_sink import metrics_sinks\n"
        f"assert metrics_sinks({_params(False)!r}, {str(tmp_path)!r}) == []\n"
        f"assert metrics_sinks({{'seed': 0}}, {str(tmp_path)!r}) == []\n"
        "assert 'wandb' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert not (tmp_path / "wandb").exists()


def test_enabled_without_wandb_names_the_key(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(RuntimeError, match=r"logging\.wandb\.enabled"):
        metrics_sinks(_params(True), tmp_path)


def test_unknown_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"logging\.wandb\.mode"):
        metrics_sinks(_params(True, mode="sometimes"), tmp_path)

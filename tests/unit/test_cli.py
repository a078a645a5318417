"""The pipeline3d maintenance command."""

from pathlib import Path

import yaml

from pipeline3d.cli import main
from test_stores import write_shard

ROOT = Path(__file__).resolve().parents[2]


def test_check_config_ok_and_typo(tmp_path, capsys):
    assert main(["check-config", str(ROOT / "config" / "config.yaml")]) == 0
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["splits"]["kfolds"] = 3
    bad = tmp_path / "c.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    assert main(["check-config", str(bad)]) == 1
    assert "splits.kfolds" in capsys.readouterr().err


def test_check_cache_finds_and_fixes_a_truncated_shard(tmp_path, capsys):
    cache = tmp_path / "ds"
    cache.mkdir()
    good = write_shard(cache / "shard-0000.h5")
    bad = cache / "shard-0001.h5"
    bad.write_bytes(good.read_bytes()[:1000])
    assert main(["check-cache", str(cache)]) == 1
    assert "shard-0001.h5: INVALID" in capsys.readouterr().out
    assert main(["check-cache", str(cache), "--fix"]) == 0
    assert not bad.exists() and (cache / "shard-0001.h5.invalid").exists() and good.exists()

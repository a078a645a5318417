"""Hostile and broken archives / folders: refused with the right reason, good items still ingested, nothing
written outside the output folder (the whole tmp tree is snapshotted around every ingest)."""

from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from hostile import (
    GOOD_IDS,
    device,
    fifo,
    file,
    good_entries,
    hardlink,
    patch_zip_sizes,
    symlink,
    tetra_off,
    write_tar,
    write_zip,
)
from hostile import ingest_checked as ingest
from pipeline3d.io.archives import ArchiveRefused, Limits, open_raw, safe_member_name, zip_entry_count
from pipeline3d.io.itemstore import ItemStore


def ids(manifest: pd.DataFrame) -> set[str]:
    return {s.split("/", 1)[1] for s in manifest["shape_id"]}


def reasons(rejects: pd.DataFrame) -> dict[str, str]:
    """source (member part) -> reason."""
    return {s.split("::", 1)[-1]: r for s, r in zip(rejects["source"], rejects["reason"])}


# ------------------------------------------------------------------------------------------------ member level


def test_absolute_member_name_is_refused(tmp_path):
    target = tmp_path / "abs_escape.off"
    src = write_tar(tmp_path / "in" / "a.tar.gz", good_entries() + [file(str(target), tetra_off())])
    manifest, rejects = ingest(tmp_path, src)
    assert ids(manifest) == GOOD_IDS
    assert reasons(rejects) == {str(target): "unsafe_path"}
    assert not target.exists()


@pytest.mark.parametrize("writer", ["tar", "zip"])
def test_dotdot_member_name_is_refused(tmp_path, writer):
    entries = good_entries() + [file("chair/../../../escaped.off", tetra_off())]
    src = (
        write_tar(tmp_path / "in" / "a.tar", entries, compression="")
        if writer == "tar"
        else write_zip(tmp_path / "in" / "a.zip", entries)
    )
    manifest, rejects = ingest(tmp_path, src)
    assert ids(manifest) == GOOD_IDS
    assert list(rejects["reason"]) == ["unsafe_path"]
    assert "'..'" in rejects["detail"][0]
    assert not (tmp_path.parent / "escaped.off").exists()


def test_escaping_symlink_member_is_refused(tmp_path):
    src = write_tar(tmp_path / "in" / "a.tar.gz", good_entries() + [symlink("chair/evil.off", "/etc/passwd")])
    manifest, rejects = ingest(tmp_path, src)
    assert ids(manifest) == GOOD_IDS
    assert reasons(rejects) == {"chair/evil.off": "link"}
    assert "never followed" in rejects["detail"][0]


def test_hardlink_member_is_refused(tmp_path):
    src = write_tar(
        tmp_path / "in" / "a.tar.xz",
        good_entries() + [hardlink("table/copy.off", "chair/good_a.off")],
        compression="xz",
    )
    manifest, rejects = ingest(tmp_path, src)
    assert ids(manifest) == GOOD_IDS
    assert reasons(rejects) == {"table/copy.off": "link"}


def test_zip_symlink_member_is_refused(tmp_path):
    src = write_zip(tmp_path / "in" / "a.zip", good_entries() + [symlink("chair/evil.off", "../../etc/passwd")])
    manifest, rejects = ingest(tmp_path, src)
    assert ids(manifest) == GOOD_IDS
    assert reasons(rejects) == {"chair/evil.off": "link"}


@pytest.mark.parametrize("builder", [device, fifo])
def test_device_and_fifo_members_are_refused(tmp_path, builder):
    src = write_tar(tmp_path / "in" / "a.tar.bz2", good_entries() + [builder("chair/dev.off")], compression="bz2")
    manifest, rejects = ingest(tmp_path, src)
    assert ids(manifest) == GOOD_IDS
    assert reasons(rejects) == {"chair/dev.off": "special_file"}


@pytest.mark.parametrize("writer", ["tar", "zip"])
def test_oversized_member_is_refused(tmp_path, writer):
    big = tetra_off() + b"\n" * 5000  # trailing blank lines keep it a valid mesh: only its size is wrong
    entries = good_entries() + [file("chair/big.off", big)]
    src = (
        write_tar(tmp_path / "in" / "a.tgz", entries)
        if writer == "tar"
        else write_zip(tmp_path / "in" / "a.zip", entries)
    )
    manifest, rejects = ingest(tmp_path, src, max_member_bytes=4000)
    assert ids(manifest) == GOOD_IDS
    assert reasons(rejects) == {"chair/big.off": "too_big"}


def test_zip_member_with_a_high_ratio_is_refused(tmp_path):
    # one 4 MB run of zeros (ratio ~1000) next to 1 MB of incompressible bytes: the archive as a whole is fine
    noise = os.urandom(1 << 20)
    entries = good_entries() + [file("chair/zeros.off", b"\0" * (4 << 20)), file("noise.bin", noise)]
    src = write_zip(tmp_path / "in" / "a.zip", entries)
    manifest, rejects = ingest(tmp_path, src, max_ratio=20)
    assert ids(manifest) == GOOD_IDS
    assert reasons(rejects) == {"chair/zeros.off": "ratio"}


def test_zip_member_lying_about_its_size_is_not_trusted(tmp_path):
    # the headers claim 10 bytes; the data is a whole mesh: reading stops at the claim and the CRC check fails
    src = write_zip(
        tmp_path / "in" / "a.zip",
        good_entries() + [file("chair/liar.off", tetra_off())],
        compression=zipfile.ZIP_STORED,
    )
    patch_zip_sizes(src, "chair/liar.off", 10)
    manifest, rejects = ingest(tmp_path, src)
    assert ids(manifest) == GOOD_IDS
    assert reasons(rejects) == {"chair/liar.off": "read_error"}


def test_member_name_that_is_not_utf8_is_refused(tmp_path):
    src = write_tar(
        tmp_path / "in" / "a.tar.gz", good_entries() + [file("chair/caf\xe9.off", tetra_off())], encoding="latin-1"
    )
    manifest, rejects = ingest(tmp_path, src)
    assert ids(manifest) == GOOD_IDS
    assert rejects["reason"].tolist() == ["unsafe_path"] and rejects["source"][0].endswith("chair/caf\\udce9.off")


def test_unsafe_names_are_recognised():
    for bad in ["/etc/x", "a/../../b", "..", "C:/x", "c:\\x", "a\x00b", "./", ""]:
        with pytest.raises(ValueError):
            safe_member_name(bad, backslash_is_separator=True)
    assert safe_member_name("./a//b/./c.off") == "a/b/c.off"
    assert safe_member_name("a\\b.off", backslash_is_separator=True) == "a/b.off"
    with pytest.raises(ValueError):
        safe_member_name("..\\..\\x", backslash_is_separator=True)


# ------------------------------------------------------------------------------------------------ archive level


@pytest.mark.parametrize("writer", ["tar", "zip"])
def test_too_many_members_refuses_the_archive(tmp_path, writer):
    entries = good_entries() + [file(f"chair/extra_{i}.txt", b"x") for i in range(20)]
    src = (
        write_tar(tmp_path / "in" / "a.tar.gz", entries)
        if writer == "tar"
        else write_zip(tmp_path / "in" / "a.zip", entries)
    )
    manifest, rejects = ingest(tmp_path, src, max_members=10)
    assert manifest.empty
    assert list(rejects["reason"]) == ["too_many_members"] and rejects["source"][0] == str(src)
    assert rejects["stage"][0] == "ingest"


def test_zip_member_count_is_read_before_the_directory():
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(7):
            zf.writestr(f"f{i}", b"")
    assert zip_entry_count(buf) == 7


def test_too_many_bytes_refuses_the_archive(tmp_path):
    entries = good_entries() + [file("chair/pad.txt", os.urandom(300_000))]
    src = write_tar(tmp_path / "in" / "a.tar.gz", entries)
    manifest, rejects = ingest(tmp_path, src, max_total_bytes=100_000)
    assert manifest.empty
    assert list(rejects["reason"]) == ["too_many_bytes"]


def test_ratio_bomb_refuses_a_tar_stream_whole(tmp_path):
    entries = good_entries() + [file("chair/zeros.txt", b"\0" * (6 << 20))]
    manifest, rejects = ingest(tmp_path, write_tar(tmp_path / "in" / "a.tar.gz", entries), max_ratio=50)
    assert manifest.empty
    assert list(rejects["reason"]) == ["ratio"]
    with ItemStore(tmp_path / "out" / "items.h5") as store:
        assert len(store) == 0


def test_ratio_bomb_member_of_a_zip_is_refused_alone(tmp_path):
    """The zip as a whole is over max_ratio only because of one member: that member goes, the meshes stay."""
    entries = good_entries() + [file("chair/zeros.txt", b"\0" * (6 << 20))]
    manifest, rejects = ingest(tmp_path, write_zip(tmp_path / "in" / "a.zip", entries), max_ratio=50)
    assert ids(manifest) == GOOD_IDS
    assert reasons(rejects) == {"chair/zeros.txt": "ratio"}


def test_overlapping_zip_entries_refuse_the_archive(tmp_path):
    src = write_zip(tmp_path / "in" / "a.zip", good_entries())
    with zipfile.ZipFile(src) as zf:
        name = zf.infolist()[0].filename
    patch_zip_sizes(src, name, 10, compress_size=src.stat().st_size + 1)
    manifest, rejects = ingest(tmp_path, src)
    assert manifest.empty and list(rejects["reason"]) == ["ratio"]
    assert "overlapping entries" in rejects["detail"][0]


def test_tar_bomb_is_stopped_while_decompressing(tmp_path):
    """The limit is checked on the bytes actually decompressed, not on the member headers."""
    src = write_tar(tmp_path / "in" / "a.tar.gz", [file("chair/zeros.txt", b"\0" * (8 << 20))])
    limits = Limits(max_members=10, max_total_bytes=10**12, max_member_bytes=10**12, max_ratio=10)
    with pytest.raises(ArchiveRefused) as info:
        open_raw(src, limits)
    assert info.value.reason == "ratio"


@pytest.mark.parametrize("content", [b"", b"not an archive at all" * 40, b"\x1f\x8b\x08garbage-after-gzip-magic"])
def test_corrupt_or_unknown_archive_is_refused(tmp_path, content):
    src = tmp_path / "in" / "broken.tar.gz"
    src.parent.mkdir()
    src.write_bytes(content)
    manifest, rejects = ingest(tmp_path, src)
    assert manifest.empty
    assert list(rejects["reason"]) == ["bad_archive"]


def test_truncated_tar_gz_is_refused(tmp_path):
    src = write_tar(tmp_path / "in" / "a.tar.gz", good_entries() + [file("chair/pad.txt", os.urandom(200_000))])
    src.write_bytes(src.read_bytes()[:-5000])
    manifest, rejects = ingest(tmp_path, src)
    assert manifest.empty and list(rejects["reason"]) == ["bad_archive"]


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        open_raw(tmp_path / "does-not-exist", Limits())


# ------------------------------------------------------------------------------------------------ directories


def _loose_dir(root: Path) -> Path:
    for e in good_entries():
        (root / e.name).parent.mkdir(parents=True, exist_ok=True)
        (root / e.name).write_bytes(e.data)
    return root


def test_directory_symlink_leaving_the_root_is_refused(tmp_path):
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "secret.off").write_bytes(tetra_off())
    root = _loose_dir(tmp_path / "in")
    (root / "chair" / "evil.off").symlink_to(outside / "secret.off")
    (root / "lamp").symlink_to(outside / "deep", target_is_directory=True)
    (root / "table" / "inside.off").symlink_to(root / "chair" / "good_a.off")
    (root / "table" / "dangling.off").symlink_to(root / "nowhere.off")
    manifest, rejects = ingest(tmp_path, root)
    assert ids(manifest) == GOOD_IDS | {"table/inside"}  # a link that stays inside the root is followed
    got = {Path(s).relative_to(root).as_posix(): r for s, r in zip(rejects["source"], rejects["reason"])}
    assert got == {"chair/evil.off": "link", "lamp": "link", "table/dangling.off": "link"}


def test_directory_fifo_is_refused_without_blocking(tmp_path):
    root = _loose_dir(tmp_path / "in")
    os.mkfifo(root / "chair" / "pipe.off")
    manifest, rejects = ingest(tmp_path, root)
    assert ids(manifest) == GOOD_IDS
    assert list(rejects["reason"]) == ["special_file"]


def test_directory_file_name_that_is_not_utf8_is_refused(tmp_path):
    root = _loose_dir(tmp_path / "in")
    (root / "chair" / os.fsdecode(b"caf\xe9.off")).write_bytes(tetra_off())
    manifest, rejects = ingest(tmp_path, root)
    assert ids(manifest) == GOOD_IDS
    assert rejects["reason"].tolist() == ["unsafe_path"]


def test_directory_oversized_file_is_refused(tmp_path):
    root = _loose_dir(tmp_path / "in")
    (root / "chair" / "big.off").write_bytes(tetra_off() + b"\n" * 5000)
    manifest, rejects = ingest(tmp_path, root, max_member_bytes=4000)
    assert ids(manifest) == GOOD_IDS
    assert list(rejects["reason"]) == ["too_big"]


def test_tar_with_a_top_folder_and_junk_is_read_in_place(tmp_path):
    entries = (
        [file("top/", b"")]
        + good_entries("top/")
        + [file("top/chair/good_a.mtl", b"newmtl x\n"), file("__MACOSX/top/chair/._good_a.off", b"\0\5junk")]
    )
    entries[0].kind = "dir"
    src = write_tar(tmp_path / "in" / "a.tar.gz", entries)
    with tarfile.open(src) as tf:  # sanity: the archive really has the members
        assert "top/chair/good_a.off" in tf.getnames()
    manifest, rejects = ingest(tmp_path, src)
    assert ids(manifest) == GOOD_IDS and rejects.empty
    assert manifest["source"].str.startswith(f"{src}::top/").all()

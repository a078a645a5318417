"""The raw-folder digest that makes ingest rerun when files inside a raw folder change."""

import os

from pipeline3d.io.rawdigest import listing_digest


def test_digest_changes_with_any_file_below(tmp_path):
    (tmp_path / "chair" / "train").mkdir(parents=True)
    f = tmp_path / "chair" / "train" / "a.off"
    f.write_text("OFF\n")
    d0 = listing_digest(tmp_path)
    assert d0 == listing_digest(tmp_path)  # stable
    (tmp_path / "chair" / "train" / "b.off").write_text("OFF\n")
    d1 = listing_digest(tmp_path)
    assert d1 != d0  # added in a subfolder
    f.write_text("OFF\n3 1 0\n")
    d2 = listing_digest(tmp_path)
    assert d2 != d1  # resized
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert listing_digest(tmp_path) != d2  # rewritten (mtime)
    (tmp_path / "chair" / "train" / "b.off").unlink()
    assert listing_digest(tmp_path) not in (d0, d1, d2)


def test_digest_of_a_file_is_empty(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"x")
    assert listing_digest(tmp_path / "x.tar") == ""

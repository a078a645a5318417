"""Image-tar ingest: <key>.png|jpg + <key>.json pairs, labels, splits, captions, and bad pairs."""

from __future__ import annotations

import io
import json

import pytest

from hostile import corrupt_png, file, huge_png_header, image_json, png_bytes, write_tar, write_zip
from hostile import ingest_checked as ingest
from pipeline3d.io.images import inspect_image
from pipeline3d.io.itemstore import ItemStore
from pipeline3d.io.rejects import ItemError


def jpeg_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (10, 7), (10, 200, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def gif_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (4, 4), 3).save(buf, format="GIF")
    return buf.getvalue()


def good_pairs() -> list:
    return [
        file("imgs/chair_0001_v0.png", png_bytes(8, 6)),
        file("imgs/chair_0001_v0.json", image_json("chair", "train", caption="a wooden chair", view=0)),
        file("imgs/mug_0003_v1.jpg", jpeg_bytes()),
        file("imgs/mug_0003_v1.json", image_json("mug", "", caption="a mug", view=1)),
    ]


def test_image_tar_ids_labels_splits_meta_and_bytes(tmp_path):
    src = write_tar(tmp_path / "in" / "images.tar", good_pairs(), compression="")
    manifest, rejects = ingest(tmp_path, src, kind="image")
    assert rejects.empty
    assert manifest["shape_id"].tolist() == ["ds/chair/chair_0001_v0", "ds/mug/mug_0003_v1"]
    assert manifest["label"].tolist() == [0, 1] and manifest["source_split"].tolist() == ["train", ""]
    assert manifest["format"].tolist() == ["png", "jpeg"] and manifest["kind"].eq("image").all()
    meta = json.loads(manifest["meta"][0])
    assert meta == {"label": "chair", "split": "train", "caption": "a wooden chair", "view": 0}
    assert manifest[["n_vertices", "n_faces", "n_points"]].isna().all().all()
    with ItemStore(tmp_path / "out" / "items.h5") as store:
        assert store.image_bytes(0) == png_bytes(8, 6)
        assert store.image_bytes(1) == jpeg_bytes()
    import hashlib

    assert manifest["sha256"][0] == hashlib.sha256(png_bytes(8, 6)).hexdigest()


@pytest.mark.parametrize(
    "extra, reason",
    [
        ([file("imgs/lonely.png", png_bytes())], "missing_json"),
        ([file("imgs/orphan.json", image_json("chair"))], "missing_image"),
        ([file("imgs/broken.png", corrupt_png()), file("imgs/broken.json", image_json("chair"))], "bad_image"),
        ([file("imgs/notpng.png", b"hello"), file("imgs/notpng.json", image_json("chair"))], "bad_image"),
        ([file("imgs/bomb.png", huge_png_header()), file("imgs/bomb.json", image_json("chair"))], "too_large"),
        ([file("imgs/badjson.png", png_bytes()), file("imgs/badjson.json", b"{not json")], "bad_json"),
        ([file("imgs/nolabel.png", png_bytes()), file("imgs/nolabel.json", b'{"split": "train"}')], "bad_json"),
        ([file("imgs/list.png", png_bytes()), file("imgs/list.json", b'["chair"]')], "bad_json"),
        ([file("imgs/val.png", png_bytes()), file("imgs/val.json", image_json("chair", "val"))], "bad_json"),
        ([file("imgs/gif.png", gif_bytes()), file("imgs/gif.json", image_json("chair"))], "unsupported_format"),
    ],
)
def test_bad_pairs_are_rejected_and_the_rest_ingested(tmp_path, extra, reason):
    src = write_tar(tmp_path / "in" / "images.tar.gz", good_pairs() + extra)
    manifest, rejects = ingest(tmp_path, src, kind="image")
    assert manifest["shape_id"].tolist() == ["ds/chair/chair_0001_v0", "ds/mug/mug_0003_v1"]
    assert rejects["reason"].tolist() == [reason]
    assert rejects["source"][0] in {f"{src}::{e.name}" for e in extra}


def test_integer_labels_use_class_names(tmp_path):
    entries = [
        file("a.png", png_bytes()),
        file("a.json", image_json(2)),
        file("b.png", png_bytes()),
        file("b.json", image_json(0)),
        file("c.png", png_bytes()),
        file("c.json", image_json(9)),
    ]
    src = write_zip(tmp_path / "in" / "images.zip", entries)
    manifest, rejects = ingest(tmp_path, src, kind="image", source_extra={"class_names": ["cat", "dog", "eel"]})
    assert manifest["shape_id"].tolist() == ["ds/cat/b", "ds/eel/a"]
    assert manifest["label"].tolist() == [0, 2]
    assert rejects["reason"].tolist() == ["bad_json"] and "only 3 class names" in rejects["detail"][0]


def test_two_images_for_one_key_keep_the_first(tmp_path):
    entries = good_pairs() + [file("imgs/chair_0001_v0.jpg", jpeg_bytes())]
    src = write_tar(tmp_path / "in" / "images.tar.gz", entries)
    manifest, rejects = ingest(tmp_path, src, kind="image")
    assert manifest["source"][0].endswith("chair_0001_v0.jpg")  # .jpg sorts before .png
    assert rejects["reason"].tolist() == ["duplicate_id"]


def test_decoder_cap_is_checked_before_decoding():
    assert inspect_image(png_bytes(30, 20), max_pixels=600).width == 30
    with pytest.raises(ItemError) as info:
        inspect_image(png_bytes(30, 21), max_pixels=600)
    assert info.value.reason == "too_large"

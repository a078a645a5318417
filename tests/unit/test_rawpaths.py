"""Raw inputs of a dataset entry and the parse-time check that they exist and can be read."""

from __future__ import annotations

import os

from pipeline3d.io.rawpaths import raw_input_problems, raw_inputs


def mesh(path):
    return {"kind": "mesh", "format": "modelnet", "path": path}


def test_existing_inputs_pass_and_missing_ones_name_dataset_and_path(tmp_path):
    (tmp_path / "ok").mkdir()
    datasets = {"good": mesh(str(tmp_path / "ok")), "bad": mesh([str(tmp_path / "ok"), "/nonexistent/dir"])}
    assert raw_input_problems(datasets) == ["datasets.bad.path: /nonexistent/dir does not exist"]


def test_scanobjectnn_names_the_missing_variant_file(tmp_path):
    ds = {"kind": "pointcloud", "format": "scanobjectnn", "variant": "obj_bg", "path": str(tmp_path)}
    train, test = raw_inputs(ds)
    (tmp_path / "main_split").mkdir()
    open(train, "wb").close()
    assert raw_input_problems({"scans": ds}) == [
        f"datasets.scans.path: {test} does not exist (expected in a scanobjectnn folder of variant obj_bg)"
    ]


def test_outputs_of_the_workflow_need_not_exist_yet(tmp_path):
    demo = tmp_path / "demo"
    ds = {"kind": "pointcloud", "format": "scanobjectnn", "variant": "obj_bg", "path": str(demo / "scans")}
    produced = [*raw_inputs(ds), str(demo / "meshes.tar.gz")]
    assert raw_input_problems({"scan": ds, "mesh": mesh(str(demo / "meshes.tar.gz"))}, produced) == []


def test_unreadable_input_is_named(tmp_path, monkeypatch):
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"")
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(archive) else real(p, mode))
    assert raw_input_problems({"a": mesh(str(archive))}) == [f"datasets.a.path: {archive} is not readable"]

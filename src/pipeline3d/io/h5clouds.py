"""Point-cloud h5 files (ScanObjectNN, ModelNet40-h5 and the like): file discovery and validated reading.

A file holds ``data`` [N,P,3] (any real dtype, read as float32) and ``label`` [N] or [N,1] (integers, or
integral floats); ScanObjectNN's optional ``mask`` is not used. File-level problems raise ``ItemError``
(``unreadable``, ``missing_keys``, ``bad_shape``, ``bad_dtype``, ``length_mismatch``, ``bad_label``) so the
caller writes one rejects row for the file and goes on; ``check_cloud`` raises per item (``empty``,
``nonfinite``, ``degenerate``).

``SCANOBJECTNN_VARIANTS`` is the one place that maps a ScanObjectNN variant to its files; the workflow's
``get_raw_inputs`` uses ``scanobjectnn_files`` too. Import-light (h5py is imported on use): Snakemake imports
this module at parse time.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

import numpy as np

from .coords import scale_problem
from .rejects import ItemError

# variant -> (folder under the ScanObjectNN root, file stem after "training_" / "test_")
SCANOBJECTNN_VARIANTS: dict[str, tuple[str, str]] = {
    "obj_bg": ("main_split", "objectdataset"),
    "obj_only": ("main_split_nobg", "objectdataset"),
    "pb_t50_rs": ("main_split", "objectdataset_augmentedrot_scale75"),
}
H5_SUFFIXES = (".h5", ".hdf5")
CLASS_NAMES_FILE = "shape_names.txt"


def scanobjectnn_files(root: str | os.PathLike, variant: str) -> list[str]:
    """The [training, test] h5 paths of a ScanObjectNN variant under ``root`` (paths only, no file access)."""
    if variant not in SCANOBJECTNN_VARIANTS:
        raise ValueError(f"unknown ScanObjectNN variant {variant!r} (known: {', '.join(SCANOBJECTNN_VARIANTS)})")
    folder, stem = SCANOBJECTNN_VARIANTS[variant]
    base = Path(root) / folder
    return [str(base / f"training_{stem}.h5"), str(base / f"test_{stem}.h5")]


def split_of(path: str | os.PathLike) -> str:
    """'train' / 'test' from a file name (ScanObjectNN training_*, ModelNet40 ply_data_train0.h5), else ''."""
    name = PurePath(path).name.lower()
    if "train" in name:
        return "train"
    if "test" in name:
        return "test"
    return ""


def find_h5_files(path: str | os.PathLike) -> list[str]:
    """One h5 file, or every h5 file under a directory (recursive, sorted, links that leave it not followed)."""
    p = Path(path)
    if p.is_file():
        return [str(path)]
    if not p.is_dir():
        raise FileNotFoundError(f"{path}: point-cloud input does not exist")
    root = os.path.realpath(p)
    found = []
    for dirpath, dirnames, filenames in os.walk(p):
        dirnames.sort()
        for fname in sorted(filenames):
            full = os.path.join(dirpath, fname)
            if fname.lower().endswith(H5_SUFFIXES):
                real = os.path.realpath(full)
                if real.startswith(root.rstrip(os.sep) + os.sep) and os.path.isfile(real):
                    found.append(full)
    return found


def class_names_near(files: list[str]) -> list[str] | None:
    """Label names from a ``shape_names.txt`` beside the h5 files (ModelNet40-h5 ships one), if there is one."""
    for folder in sorted({str(Path(f).parent) for f in files}):
        candidate = Path(folder) / CLASS_NAMES_FILE
        if candidate.is_file():
            names = [line.strip() for line in candidate.read_text(encoding="utf-8").splitlines()]
            names = [n for n in names if n]
            if names:
                return names
    return None


class CloudFile:
    """An opened, validated point-cloud h5 file; ``points(i)`` reads one cloud."""

    def __init__(self, path: str | os.PathLike):
        import h5py

        self.path = str(path)
        try:
            self._h5 = h5py.File(self.path, "r")
        except (OSError, ValueError) as exc:
            raise ItemError("unreadable", f"cannot open as HDF5: {exc}") from None
        try:
            self._check()
        except BaseException:
            self._h5.close()
            raise

    def _check(self) -> None:
        import h5py

        missing = [k for k in ("data", "label") if k not in self._h5 or not isinstance(self._h5[k], h5py.Dataset)]
        if missing:
            raise ItemError(
                "missing_keys",
                f"no dataset {' or '.join(map(repr, missing))} "
                f"(has: {', '.join(sorted(self._h5.keys())) or 'nothing'})",
            )
        data, label = self._h5["data"], self._h5["label"]
        if data.ndim != 3 or data.shape[2] != 3:
            raise ItemError("bad_shape", f"'data' has shape {data.shape}, expected [N, P, 3]")
        if not (label.ndim == 1 or (label.ndim == 2 and label.shape[1] == 1)):
            raise ItemError("bad_shape", f"'label' has shape {label.shape}, expected [N] or [N, 1]")
        if data.dtype.kind not in "fiu":
            raise ItemError("bad_dtype", f"'data' has dtype {data.dtype}")
        if label.dtype.kind not in "fiu":
            raise ItemError("bad_dtype", f"'label' has dtype {label.dtype}")
        if label.shape[0] != data.shape[0]:
            raise ItemError("length_mismatch", f"{label.shape[0]} labels for {data.shape[0]} clouds")
        raw = np.asarray(label[()]).reshape(-1)
        if raw.dtype.kind == "f" and not bool(np.all(np.isfinite(raw) & (raw == np.rint(raw)))):
            raise ItemError("bad_label", "'label' holds non-integer values")
        self.labels = raw.astype(np.int64)
        self.n_items, self.n_points = int(data.shape[0]), int(data.shape[1])
        self._data = data

    def points(self, index: int) -> np.ndarray:
        return np.ascontiguousarray(self._data[index], dtype=np.float32)

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "CloudFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_cloud(points: np.ndarray) -> None:
    """Raise ``ItemError`` for an empty, non-finite or zero-extent cloud."""
    if points.shape[0] == 0:
        raise ItemError("empty", "no points")
    bad = ~np.isfinite(points).all(axis=1)
    if bool(bad.any()):
        raise ItemError("nonfinite", f"{int(bad.sum())} of {len(points)} points have NaN/inf coordinates")
    problem = scale_problem(points)
    if problem:
        raise ItemError("bad_scale", problem)
    if float((points.max(axis=0) - points.min(axis=0)).max()) == 0.0:
        raise ItemError("degenerate", "all points coincide (zero extent)")

"""A small table model rendered to markdown, CSV and LaTeX (booktabs) with one fixed number format.

A ``Table`` holds typed cells (str, int, float, ``MeanStd`` or None) so each format renders them its own way:
markdown and LaTeX show ``0.412 ± 0.031`` with ``DECIMALS`` decimals, the CSV keeps mean and std in two columns
(``<key>_mean``, ``<key>_std``) at 6 decimals so it can be read back for further analysis. A std of None (one
seed, one split) renders as ``± -`` and an empty CSV cell; a missing value (None) renders as ``-``.

Rows may carry a group (e.g. the dataset): markdown renders one sub-table per group, LaTeX one ``tabular`` with a
bold group line before each block, the CSV a leading column. Rendering depends only on the cells, so the same
rows always give the same bytes.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

DECIMALS = 3
CSV_FLOAT = "{:.6f}"
NO_RESULTS = "no results"


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample std (ddof=1) over ``n`` runs; std is None when n == 1 (it is undefined)."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> MeanStd:
        vals = [float(v) for v in values]
        if not vals:
            raise ValueError("MeanStd of no values")
        n = len(vals)
        mean = math.fsum(vals) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
        return cls(mean, std, n)


Cell = str | int | float | MeanStd | None


@dataclass(frozen=True)
class Column:
    key: str  # CSV header (snake_case, stable for scripts)
    header: str  # markdown / LaTeX header (for humans)
    align: str = "l"  # LaTeX alignment: l | r | c
    mean_std: bool = False  # cells are MeanStd (or None): CSV columns <key>_mean, <key>_std, <key>_n


@dataclass
class Table:
    name: str  # file stem: <name>.md/.csv/.tex
    title: str
    columns: list[Column]
    group_key: str | None = None  # CSV column holding the group (dataset), None: no grouping
    groups: dict[str, list[list[Cell]]] = field(default_factory=dict)  # group -> rows, in insertion order
    group_notes: dict[str, list[str]] = field(default_factory=dict)  # markdown lines after a group's table
    notes: list[str] = field(default_factory=list)  # markdown lines after all tables

    def add(self, row: Sequence[Cell], group: str = "") -> None:
        if len(row) != len(self.columns):
            raise ValueError(f"table {self.name}: row has {len(row)} cells for {len(self.columns)} columns")
        for col, value in zip(self.columns, row):
            if value is not None and isinstance(value, MeanStd) != col.mean_std:
                raise ValueError(f"table {self.name}: column {col.key} got {value!r}")
        self.groups.setdefault(group, []).append(list(row))

    @property
    def n_rows(self) -> int:
        return sum(len(rows) for rows in self.groups.values())

    # ---------------------------------------------------------------------------------------------- markdown
    def to_markdown(self, heading_level: int = 1) -> str:
        hashes = "#" * heading_level
        lines = [f"{hashes} {self.title}", ""]
        if not self.n_rows:
            lines += [f"_{NO_RESULTS}_", ""]
        for group, rows in self.groups.items():
            if self.group_key is not None:
                lines += [f"{hashes}# {group}", ""]
            lines.append("| " + " | ".join(c.header for c in self.columns) + " |")
            lines.append("|" + "|".join(_md_rule(c.align) for c in self.columns) + "|")
            lines += ["| " + " | ".join(_text(v).replace("|", "\\|") for v in row) + " |" for row in rows]
            lines.append("")
            if self.group_notes.get(group):
                lines += [*self.group_notes[group], ""]
        if self.notes:
            lines += [*self.notes, ""]
        return "\n".join(lines).rstrip("\n") + "\n"

    # ---------------------------------------------------------------------------------------------- CSV
    def csv_header(self) -> list[str]:
        header = [self.group_key] if self.group_key is not None else []
        for col in self.columns:
            header += [f"{col.key}_mean", f"{col.key}_std", f"{col.key}_n"] if col.mean_std else [col.key]
        return header

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.csv_header())
        for group, rows in self.groups.items():
            for row in rows:
                out = [group] if self.group_key is not None else []
                for col, value in zip(self.columns, row):
                    out += _csv_cells(value, col.mean_std)
                writer.writerow(out)
        return buf.getvalue()

    # ---------------------------------------------------------------------------------------------- LaTeX
    def to_latex(self) -> str:
        spec = "".join(c.align for c in self.columns)
        lines = [
            "% " + latex_escape(self.title).replace("\n", " "),
            "\\begin{tabular}{" + spec + "}",
            "\\toprule",
            " & ".join(latex_escape(c.header) for c in self.columns) + " \\\\",
            "\\midrule",
        ]
        if not self.n_rows:
            lines.append(f"\\multicolumn{{{len(self.columns)}}}{{c}}{{\\textit{{{NO_RESULTS}}}}} \\\\")
        for i, (group, rows) in enumerate(self.groups.items()):
            if self.group_key is not None:
                if i:
                    lines.append("\\midrule")
                lines.append(f"\\multicolumn{{{len(self.columns)}}}{{l}}{{\\textbf{{{latex_escape(group)}}}}} \\\\")
            lines += [" & ".join(_latex_cell(v) for v in row) + " \\\\" for row in rows]
        lines += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines) + "\n"


def _md_rule(align: str) -> str:
    return {"r": "---:", "c": ":---:"}.get(align, "---")


def fmt_float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    text = f"{value:.{DECIMALS}f}"
    return "0." + "0" * DECIMALS if text == "-0." + "0" * DECIMALS else text  # no "-0.000"


def _text(value: Cell) -> str:
    if value is None:
        return "-"
    if isinstance(value, MeanStd):
        std = "-" if value.std is None else fmt_float(value.std)
        return f"{fmt_float(value.mean)} ± {std}"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return fmt_float(value)
    return str(value)


def _csv_cells(value: Cell, mean_std_column: bool) -> list[str]:
    if mean_std_column:
        if value is None:
            return ["", "", ""]
        if not isinstance(value, MeanStd):
            raise ValueError(f"a mean ± std column got {value!r}")
        return [CSV_FLOAT.format(value.mean), "" if value.std is None else CSV_FLOAT.format(value.std), str(value.n)]
    if value is None:
        return [""]
    if isinstance(value, float) and not isinstance(value, bool):
        return [CSV_FLOAT.format(value)]
    return [str(value)]


def _latex_cell(value: Cell) -> str:
    if isinstance(value, MeanStd):
        std = "-" if value.std is None else fmt_float(value.std)
        return f"{fmt_float(value.mean)} $\\pm$ {std}"
    return latex_escape(_text(value))


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "±": r"$\pm$",
    "→": r"$\rightarrow$",
    "τ": r"$\tau$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (one pass, so the backslashes it adds are never escaped again);
    an ASCII arrow "->" becomes $\\rightarrow$."""
    return r"$\rightarrow$".join("".join(_LATEX_SPECIAL.get(ch, ch) for ch in part) for part in text.split("->"))


def read_csv(text: str) -> list[dict[str, str]]:
    """The rows of a ``Table.to_csv`` output as dicts (for tests and downstream scripts)."""
    return list(csv.DictReader(io.StringIO(text)))

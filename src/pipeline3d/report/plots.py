"""Report plots (matplotlib, Agg canvas, no pyplot global state) with deterministic PNG bytes.

Fixed size and dpi, the bundled DejaVu font, sorted inputs and ``metadata={"Software": None}`` (matplotlib writes
its version there otherwise) make the same data give the same bytes. An empty plot says "no results" instead of
being missing, so the workflow can always declare the file.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg", force=False)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DPI = 100
PANEL_SIZE = (5.0, 3.6)  # inches per panel
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "legend.fontsize": 8,
    "svg.hashsalt": "pipeline3d",
    "path.simplify": True,
}


def _figure(n_panels: int) -> Figure:
    n = max(1, n_panels)
    fig = Figure(figsize=(PANEL_SIZE[0] * n, PANEL_SIZE[1]), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _empty(ax, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def k_label(k: int) -> str:
    return "full" if int(k) == 0 else str(int(k))


def fewshot_accuracy_png(table: pd.DataFrame, method_order: Sequence[str] = ()) -> bytes:
    """Test accuracy vs K, one panel per dataset, one line per method with sample-std error bars.

    ``table`` columns: dataset, method, k, n_seed, acc_mean, acc_std (std NaN/None with one seed: no bar).
    K is categorical (1, 5, 10, ..., then "full" for K=0) so the few-shot points are evenly spaced.
    """
    with matplotlib.rc_context(STYLE):
        datasets = sorted(table["dataset"].unique()) if len(table) else []
        fig = _figure(len(datasets))
        axes = fig.subplots(1, max(1, len(datasets)), squeeze=False)[0]
        if not datasets:
            _empty(axes[0], "Few-shot test accuracy")
            return _png(fig)
        for ax, dataset in zip(axes, datasets):
            part = table[table["dataset"] == dataset]
            ks = sorted(part["k"].unique(), key=lambda k: (k == 0, k))
            pos = {k: i for i, k in enumerate(ks)}
            methods = _ordered(part["method"].unique(), method_order)
            for j, method in enumerate(methods):
                rows = part[part["method"] == method].sort_values("k", key=lambda s: s.map(pos))
                x = rows["k"].map(pos).to_numpy(dtype=float) + (j - (len(methods) - 1) / 2) * 0.04  # no overlap
                std = pd.to_numeric(rows["acc_std"], errors="coerce").fillna(0.0).to_numpy()
                ax.errorbar(x, rows["acc_mean"].to_numpy(), yerr=std, marker="o", capsize=3, label=method)
            ax.set_xticks(range(len(ks)), [k_label(k) for k in ks])
            ax.set_xlabel("K (shots per class)")
            ax.set_ylabel("test accuracy")
            ax.set_ylim(0.0, 1.0)
            ax.set_title(dataset)
            ax.grid(True, alpha=0.3)
            ax.legend(loc="lower right")
        return _png(fig)


def _ordered(values, order: Sequence[str]) -> list[str]:
    known = [m for m in order if m in set(values)]
    return known + sorted(set(values) - set(known))


def _bars(ax, labels: list[str], series: dict[str, list[float]], title: str, ylabel: str) -> None:
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels), dtype=float)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left")


def recall_at_k_png(text3d: pd.DataFrame, ucpr: pd.DataFrame, ucpr_ablation: str = "none") -> bytes:
    """Two panels: text-3D Recall@K per (dataset, method, direction) and UCPR R@1/5/10 per (dataset, method, pair).

    ``text3d``: collect.text3d_rows columns; ``ucpr``: collect.ucpr_rows columns (only ``ucpr_ablation`` rows).
    Bars are grouped by K; groups are sorted by their label.
    """
    with matplotlib.rc_context(STYLE):
        fig = _figure(2)
        ax_t, ax_u = fig.subplots(1, 2, squeeze=False)[0]
        if len(text3d):
            t = text3d.assign(label=text3d["dataset"] + "/" + text3d["method"] + "\n" + text3d["direction"])
            t = t.sort_values("label", kind="stable")
            ks = [c for c in text3d.columns if c.startswith("R@")]
            _bars(ax_t, t["label"].tolist(), {k: t[k].tolist() for k in ks}, "Text-3D retrieval", "recall")
        else:
            _empty(ax_t, "Text-3D retrieval")
        u = ucpr[ucpr["ablation"] == ucpr_ablation] if len(ucpr) else ucpr
        if len(u):
            u = u.assign(label=u["dataset"] + "/" + u["method"] + "\n" + u["query"] + " -> " + u["gallery"])
            u = u.sort_values("label", kind="stable")
            _bars(
                ax_u,
                u["label"].tolist(),
                {k: u[k].tolist() for k in ("R@1", "R@5", "R@10")},
                f"UCPR (ablation: {ucpr_ablation})",
                "recall",
            )
        else:
            _empty(ax_u, "UCPR")
        return _png(fig)

"""Histogram ranges of the shape distributions (Osada et al. 2002), shared by the descriptor floor
(``eval.descriptor``, numpy) and the pretraining target that predicts them (``objectives.shape_stats``, torch).

In RMS-radius units: a sphere's D2 reaches 2 and a thin rod's sqrt(12) ~ 3.46; a rod's radial distance reaches
sqrt(3) ~ 1.73; an equilateral triangle on a unit sphere has sqrt(area) ~ 1.14.
"""

from __future__ import annotations

D2_MAX, RADIAL_MAX, D3_MAX = 3.5, 2.5, 1.25

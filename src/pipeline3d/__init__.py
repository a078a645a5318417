"""pipeline3d: a Snakemake-orchestrated data and training pipeline for 3D representation learning."""

__version__ = "0.1.0"

"""One stage's assembly: read the inputs, build (datasets, encoders, objectives, heads), run, write the outputs.

Stage modules (``pipeline3d.stages``) stay thin command lines over these; everything here can be tested without
Snakemake.
"""

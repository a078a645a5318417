"""One module per Snakemake rule; each has ``main(argv)`` and runs as ``python -m pipeline3d.stages.<rule>``.

Stage modules are thin: parse arguments, validate the params JSON, call the library, write outputs atomically.
"""

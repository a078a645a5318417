"""What a training stage assembles: datasets from split tables and caches, an encoder, an objective, the loop.

Stage modules stay thin (argument parsing and exit codes); these modules hold the assembly so it can be tested
without Snakemake.
"""

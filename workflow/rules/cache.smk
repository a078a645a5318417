# Cache: every shape -> sampled training arrays (pipeline3d.io.cache_schema), sharded by a stable hash of the id.
# Outputs: results/cache/{dataset}/shard-{shard}.h5   one Snakemake job per shard (config cache.shards)
#          results/cache/{dataset}/index.parquet      shape_id -> (shard, row), validated against every shard
#          results/cache/{dataset}/rejects.parquet    shapes a shard job could not cache (source, stage, reason, detail)


rule build_cache_shard:
    input:
        manifest=f"{RESULTS}/ingest/{{dataset}}/manifest.parquet",
        store=f"{RESULTS}/ingest/{{dataset}}/items.h5",
    output:
        shard=f"{RESULTS}/cache/{{dataset}}/shard-{{shard}}.h5",
    log:
        f"{RESULTS}/logs/build_cache_shard/{{dataset}}/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/build_cache_shard/{{dataset}}/{{shard}}.tsv"
    priority: PRIORITY_DATA
    threads: config["cache"]["threads"]
    resources:
        mem_mb=1500,
        runtime=scaled_runtime(240),
    params:
        cfg=dataset_cfg("build_cache_shard", "cache"),
    shell:
        "{PY:q} -m pipeline3d.stages.build_cache_shard --params {params.cfg:q} --shard {wildcards.shard}"
        " --manifest {input.manifest:q} --items {input.store:q} --out {output.shard:q} > {log:q} 2>&1"


rule index_cache:
    input:
        shards=get_shards,
    output:
        index=f"{RESULTS}/cache/{{dataset}}/index.parquet",
        rejects=f"{RESULTS}/cache/{{dataset}}/rejects.parquet",
    log:
        f"{RESULTS}/logs/index_cache/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/index_cache/{{dataset}}.tsv"
    priority: PRIORITY_DATA
    threads: 1
    resources:
        mem_mb=1000,
        runtime=scaled_runtime(10),
    params:
        cfg=dataset_cfg("index_cache", "cache"),
    shell:
        "{PY:q} -m pipeline3d.stages.index_cache --params {params.cfg:q} --shards {input.shards:q}"
        " --out {output.index:q} --rejects {output.rejects:q} > {log:q} 2>&1"

# Fingerprints and splits.
# Outputs: results/fingerprints/{dataset}/fingerprints.parquet  perceptual hashes of depth views (or images) + geometry hash
#          results/fingerprints/{dataset}/duplicates.parquet    near-duplicate groups (Hamming <= threshold)
#          results/splits/{dataset}/{ttv,kfold,unpaired,fewshot,qg}.parquet   one job per family (own params)
#          results/splits/{dataset}/unpaired/{usplit}.h5       per-primitive shards that physically lack other primitives


rule fingerprint_dataset:
    input:
        unpack(get_fingerprint_inputs),
        manifest=f"{RESULTS}/ingest/{{dataset}}/manifest.parquet",
    output:
        fingerprints=f"{RESULTS}/fingerprints/{{dataset}}/fingerprints.parquet",
        duplicates=f"{RESULTS}/fingerprints/{{dataset}}/duplicates.parquet",
    log:
        f"{RESULTS}/logs/fingerprint_dataset/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fingerprint_dataset/{{dataset}}.tsv"
    priority: PRIORITY_DATA
    threads: 1
    resources:
        mem_mb=2000,
        runtime=scaled_runtime(60),
    params:
        cfg=dataset_cfg("fingerprint_dataset", "fingerprints", "cache"),
        cache_dir=f"{RESULTS}/cache/{{dataset}}",
        items_dir=parent_of_input("manifest"),
    shell:
        "{PY:q} -m pipeline3d.stages.fingerprint_dataset --params {params.cfg:q} --manifest {input.manifest:q}"
        " --cache-dir {params.cache_dir:q} --items-dir {params.items_dir:q}"
        " --fingerprints {output.fingerprints:q} --duplicates {output.duplicates:q} > {log:q} 2>&1"


rule make_splits:
    input:
        manifest=f"{RESULTS}/ingest/{{dataset}}/manifest.parquet",
        duplicates=f"{RESULTS}/fingerprints/{{dataset}}/duplicates.parquet",
    output:
        table=f"{RESULTS}/splits/{{dataset}}/{{family}}.parquet",
    log:
        f"{RESULTS}/logs/make_splits/{{dataset}}/{{family}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/make_splits/{{dataset}}/{{family}}.tsv"
    priority: PRIORITY_DATA
    threads: 1
    resources:
        mem_mb=2000,
        runtime=scaled_runtime(20),
    params:
        cfg=split_family_cfg,
        out_dir=parent_of("table"),
    shell:
        "{PY:q} -m pipeline3d.stages.make_splits --params {params.cfg:q} --manifest {input.manifest:q}"
        " --duplicates {input.duplicates:q} --out-dir {params.out_dir:q} --families {wildcards.family}"
        " > {log:q} 2>&1"


rule materialize_unpaired:
    input:
        unpaired=f"{RESULTS}/splits/{{dataset}}/unpaired.parquet",
        index=f"{RESULTS}/cache/{{dataset}}/index.parquet",
        shards=get_shards,
    output:
        store=f"{RESULTS}/splits/{{dataset}}/unpaired/{{usplit}}.h5",
    log:
        f"{RESULTS}/logs/materialize_unpaired/{{dataset}}/{{usplit}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/materialize_unpaired/{{dataset}}/{{usplit}}.tsv"
    priority: PRIORITY_DATA
    threads: 1
    resources:
        mem_mb=1500,
        runtime=scaled_runtime(60),
    params:
        cfg=dataset_cfg("materialize_unpaired", "cache"),
    shell:
        "{PY:q} -m pipeline3d.stages.materialize_unpaired --params {params.cfg:q} --split {wildcards.usplit}"
        " --unpaired {input.unpaired:q} --index {input.index:q} --shards {input.shards:q}"
        " --out {output.store:q} > {log:q} 2>&1"

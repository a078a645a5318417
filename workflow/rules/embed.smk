# Embeddings per modality (image, text, shape) and nearest-neighbour difficulty bands per embedding space.
# Paths: results/embeddings/<modality>/<dataset>/<model>.parquet, results/difficulty/<modality>/<dataset>/<model>.parquet


rule embed_image:
    input:
        unpack(embed_image_inputs),
    output:
        vectors=f"{RESULTS}/embeddings/image/{{dataset}}/{{model}}.parquet",
    log:
        f"{RESULTS}/logs/embed_image/{{dataset}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed_image/{{dataset}}/{{model}}.tsv"
    threads: 1  # one thread: vectors stay byte-identical whatever --cores caps threads to
    resources:
        mem_mb=6000,
        runtime=scaled_runtime(120),
        gpu=1,
    params:
        cfg=embed_image_cfg,
        inputs=input_json,
    shell:
        "{PY:q} -m pipeline3d.stages.embed_image --params {params.cfg:q} --inputs {params.inputs:q}"
        " --out {output.vectors:q} --threads {threads} > {log:q} 2>&1"


rule embed_text:
    input:
        manifest=f"{RESULTS}/ingest/{{dataset}}/manifest.parquet",
    output:
        vectors=f"{RESULTS}/embeddings/text/{{dataset}}/{{model}}.parquet",
    log:
        f"{RESULTS}/logs/embed_text/{{dataset}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed_text/{{dataset}}/{{model}}.tsv"
    threads: 1  # one thread: vectors stay byte-identical whatever --cores caps threads to
    resources:
        mem_mb=8000,
        runtime=scaled_runtime(120),
        gpu=1,
    params:
        cfg=embed_text_cfg,
        inputs=input_json,
        cache=f"{RESULTS}/_cache/text",  # caption vectors, shared by every job (undeclared: survives reruns)
    shell:
        "{PY:q} -m pipeline3d.stages.embed_text --params {params.cfg:q} --inputs {params.inputs:q}"
        " --out {output.vectors:q} --cache-dir {params.cache:q} --threads {threads} > {log:q} 2>&1"


rule embed_shape:
    input:
        unpack(embed_shape_inputs),
    output:
        vectors=f"{RESULTS}/embeddings/shape/{{dataset}}/{{method}}.parquet",
    log:
        f"{RESULTS}/logs/embed_shape/{{dataset}}/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed_shape/{{dataset}}/{{method}}.tsv"
    threads: embed_shape_threads  # 1 torch thread (byte-identical vectors) + embed.shape.num_workers
    resources:
        mem_mb=6000,
        runtime=scaled_runtime(120),
        gpu=1,
    params:
        cfg=embed_shape_cfg,
        inputs=input_json,
    shell:
        "{PY:q} -m pipeline3d.stages.embed_shape --params {params.cfg:q} --inputs {params.inputs:q}"
        " --out {output.vectors:q} --threads {threads} > {log:q} 2>&1"


rule difficulty_bands:
    input:
        unpack(difficulty_inputs),
    output:
        bands=f"{RESULTS}/difficulty/{{modality}}/{{dataset}}/{{model}}.parquet",
    log:
        f"{RESULTS}/logs/difficulty_bands/{{modality}}/{{dataset}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/difficulty_bands/{{modality}}/{{dataset}}/{{model}}.tsv"
    threads: 1  # one thread: vectors stay byte-identical whatever --cores caps threads to
    resources:
        mem_mb=8000,
        runtime=scaled_runtime(60),
        gpu=int(DIFFICULTY["engine"] == "gpu"),  # faiss-gpu proposes the candidates
    params:
        cfg=difficulty_cfg,
        inputs=input_json,
    shell:
        "{PY:q} -m pipeline3d.stages.difficulty_bands --params {params.cfg:q} --inputs {params.inputs:q}"
        " --out {output.bands:q} --threads {threads} > {log:q} 2>&1"

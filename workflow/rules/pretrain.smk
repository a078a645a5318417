# Pretraining: one encoder per pretrain.methods entry, on its mixed corpus.
# Outputs: results/models/{method}/encoder.safetensors + encoder.json   the exported encoder (registry name + sizes)
#          results/models/{method}/train_log.jsonl                      loss curve (step, loss, lr, per-term logs)
# Resume state lives under results/_state/ (undeclared: Snakemake deletes declared outputs before a job starts).


rule pretrain_encoder:
    input:
        unpack(corpus_inputs),
    output:
        weights=f"{RESULTS}/models/{{method}}/encoder.safetensors",
        encoder_json=f"{RESULTS}/models/{{method}}/encoder.json",
        train_log=f"{RESULTS}/models/{{method}}/train_log.jsonl",
    log:
        f"{RESULTS}/logs/pretrain_encoder/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain_encoder/{{method}}.tsv"
    # Priority reserves no cores: on 2 cores a two-thread pretraining still waits until both are free at once,
    # which one-thread fine-tunes rarely leave (so config/shrec07.yaml sets pretrain.threads 1).
    priority: PRIORITY_PRETRAIN
    threads: pretrain_threads  # pretrain.threads (2) for torch + one per DataLoader worker (SLURM --cpus-per-task)
    resources:
        mem_mb=8000,
        runtime=scaled_runtime(24 * 60),
        gpu=1,
    params:
        cfg=pretrain_cfg,
        inputs=input_json,
        state=f"{STATE}/pretrain/{{method}}",
    shell:
        "{PY:q} -m pipeline3d.stages.pretrain_encoder"
        " --params {params.cfg:q} --inputs {params.inputs:q}"
        " --state-dir {params.state:q} --weights {output.weights:q} --encoder-json {output.encoder_json:q}"
        " --train-log {output.train_log:q} --threads {threads} > {log:q} 2>&1"

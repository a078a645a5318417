# Evaluations of the pretrained encoders: unpaired cross-primitive retrieval and the UDF completion probe.
# Paths: results/eval/ucpr/<dataset>/<method>/<query>--<gallery>.json, results/eval/cpac/<dataset>/<method>/<context>.json


rule eval_ucpr:
    input:
        unpack(eval_inputs),
    output:
        metrics=f"{RESULTS}/eval/ucpr/{{dataset}}/{{method}}/{{query}}--{{gallery}}.json",
    log:
        f"{RESULTS}/logs/eval_ucpr/{{dataset}}/{{method}}/{{query}}--{{gallery}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval_ucpr/{{dataset}}/{{method}}/{{query}}--{{gallery}}.tsv"
    threads: ucpr_threads  # 1 torch thread (byte-identical results) + eval.ucpr.num_workers
    resources:
        mem_mb=6000,
        runtime=scaled_runtime(120),
        gpu=1,
    params:
        cfg=ucpr_cfg,
        inputs=input_json,
    shell:
        "{PY:q} -m pipeline3d.stages.eval_ucpr --params {params.cfg:q} --inputs {params.inputs:q}"
        " --metrics {output.metrics:q} --threads {threads} > {log:q} 2>&1"


rule eval_cpac:
    input:
        unpack(eval_inputs),
    output:
        metrics=f"{RESULTS}/eval/cpac/{{dataset}}/{{method}}/{{context}}.json",
    log:
        f"{RESULTS}/logs/eval_cpac/{{dataset}}/{{method}}/{{context}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval_cpac/{{dataset}}/{{method}}/{{context}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=scaled_runtime(120),
        gpu=1,
    params:
        cfg=cpac_cfg,
        inputs=input_json,
    shell:
        "{PY:q} -m pipeline3d.stages.eval_cpac --params {params.cfg:q} --inputs {params.inputs:q}"
        " --metrics {output.metrics:q} --threads {threads} > {log:q} 2>&1"

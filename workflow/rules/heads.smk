# Heads trained on embeddings: the metric-learning head (triplet on band negatives, UCB1 band choice; optional
# Optuna search), text-3D alignment per K-fold fold + the submission, and the PromptSG-style retrieval head.


rule tune_metric_head:
    input:
        unpack(metric_head_inputs),
    output:
        best=f"{RESULTS}/optuna/metric_head/{{modality}}/{{dataset}}/{{model}}/best.json",
    log:
        f"{RESULTS}/logs/tune_metric_head/{{modality}}/{{dataset}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tune_metric_head/{{modality}}/{{dataset}}/{{model}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=scaled_runtime(240),
        gpu=1,
    params:
        cfg=tune_metric_head_cfg,
        inputs=input_json,
        # the study lives beside best.json, undeclared, so a rerun resumes it instead of starting over
        study=f"{RESULTS}/optuna/metric_head/{{modality}}/{{dataset}}/{{model}}/study.sqlite",
    shell:
        "{PY:q} -m pipeline3d.stages.tune_metric_head --params {params.cfg:q} --inputs {params.inputs:q}"
        " --study {params.study:q} --best {output.best:q} --threads {threads} > {log:q} 2>&1"


rule train_metric_head:
    input:
        unpack(metric_head_inputs),
        unpack(metric_head_best),
    output:
        head=f"{RESULTS}/heads/metric/{{modality}}/{{dataset}}/{{model}}/head.safetensors",
        head_json=f"{RESULTS}/heads/metric/{{modality}}/{{dataset}}/{{model}}/head.json",
        metrics=f"{RESULTS}/heads/metric/{{modality}}/{{dataset}}/{{model}}/metrics.json",
    log:
        f"{RESULTS}/logs/train_metric_head/{{modality}}/{{dataset}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_metric_head/{{modality}}/{{dataset}}/{{model}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=scaled_runtime(120),
        gpu=1,
    params:
        cfg=train_metric_head_cfg,
        inputs=input_json,
        state=f"{STATE}/metric_head/{{modality}}/{{dataset}}/{{model}}",
    shell:
        "{PY:q} -m pipeline3d.stages.train_metric_head"
        " --params {params.cfg:q} --inputs {params.inputs:q}"
        " --state-dir {params.state:q} --head {output.head:q} --head-json {output.head_json:q}"
        " --metrics {output.metrics:q} --threads {threads} > {log:q} 2>&1"


rule align_text3d:
    input:
        unpack(align_inputs),
    output:
        projection=f"{RESULTS}/align_text3d/{{dataset}}/{{method}}/fold{{fold}}/projection.safetensors",
        text_tower=f"{RESULTS}/align_text3d/{{dataset}}/{{method}}/fold{{fold}}/text_tower.safetensors",
        head_json=f"{RESULTS}/align_text3d/{{dataset}}/{{method}}/fold{{fold}}/head.json",
        metrics=f"{RESULTS}/align_text3d/{{dataset}}/{{method}}/fold{{fold}}/metrics.json",
    log:
        f"{RESULTS}/logs/align_text3d/{{dataset}}/{{method}}/fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/align_text3d/{{dataset}}/{{method}}/fold{{fold}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=scaled_runtime(240),
        gpu=1,
    params:
        cfg=align_cfg,
        inputs=input_json,
        state=f"{STATE}/align_text3d/{{dataset}}/{{method}}/fold{{fold}}",
    shell:
        "{PY:q} -m pipeline3d.stages.align_text3d"
        " --params {params.cfg:q} --inputs {params.inputs:q}"
        " --state-dir {params.state:q} --projection {output.projection:q} --text-tower {output.text_tower:q}"
        " --head-json {output.head_json:q} --metrics {output.metrics:q} --threads {threads} > {log:q} 2>&1"


rule submit_text3d:
    input:
        unpack(submit_inputs),
    output:
        text2mesh=f"{RESULTS}/align_text3d/{{dataset}}/{{method}}/submission_text2mesh.csv",
        mesh2text=f"{RESULTS}/align_text3d/{{dataset}}/{{method}}/submission_mesh2text.csv",
        metrics=f"{RESULTS}/align_text3d/{{dataset}}/{{method}}/metrics.json",
    log:
        f"{RESULTS}/logs/submit_text3d/{{dataset}}/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/submit_text3d/{{dataset}}/{{method}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=scaled_runtime(60),
        gpu=1,
    params:
        cfg=submit_cfg,
        inputs=input_json,
    shell:
        "{PY:q} -m pipeline3d.stages.submit_text3d --params {params.cfg:q} --inputs {params.inputs:q}"
        " --text2mesh {output.text2mesh:q} --mesh2text {output.mesh2text:q} --metrics {output.metrics:q}"
        " > {log:q} 2>&1"


rule train_retrieval_head:
    input:
        unpack(retrieval_head_inputs),
    output:
        head=f"{RESULTS}/heads/retrieval/{{dataset}}/{{method}}/head.safetensors",
        head_json=f"{RESULTS}/heads/retrieval/{{dataset}}/{{method}}/head.json",
        metrics=f"{RESULTS}/heads/retrieval/{{dataset}}/{{method}}/metrics.json",
    log:
        f"{RESULTS}/logs/train_retrieval_head/{{dataset}}/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_retrieval_head/{{dataset}}/{{method}}.tsv"
    wildcard_constraints:
        method=HEAD_MODELS,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=scaled_runtime(120),
        gpu=1,
    params:
        cfg=retrieval_head_cfg,
        inputs=input_json,
        state=f"{STATE}/retrieval_head/{{dataset}}/{{method}}",
    shell:
        "{PY:q} -m pipeline3d.stages.train_retrieval_head"
        " --params {params.cfg:q} --inputs {params.inputs:q}"
        " --state-dir {params.state:q} --head {output.head:q} --head-json {output.head_json:q}"
        " --metrics {output.metrics:q} --threads {threads} > {log:q} 2>&1"


rule train_promptsg:
    input:
        unpack(promptsg_inputs),
    output:
        head_json=f"{RESULTS}/heads/promptsg/{{dataset}}/{{variant}}/model/head.json",
        metrics=f"{RESULTS}/heads/promptsg/{{dataset}}/{{variant}}/metrics.json",
    log:
        f"{RESULTS}/logs/train_promptsg/{{dataset}}/{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_promptsg/{{dataset}}/{{variant}}.tsv"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=scaled_runtime(240),
        gpu=1,
    params:
        cfg=promptsg_cfg,
        inputs=input_json,
        state=f"{STATE}/promptsg/{{dataset}}/{{variant}}",
        model_dir=f"{RESULTS}/heads/promptsg/{{dataset}}/{{variant}}/model",
    shell:
        "{PY:q} -m pipeline3d.stages.train_promptsg"
        " --params {params.cfg:q} --inputs {params.inputs:q}"
        " --state-dir {params.state:q} --model-dir {params.model_dir:q}"
        " --metrics {output.metrics:q} --threads {threads} > {log:q} 2>&1"

# The paper tables and plots from every metrics JSON; registered for `snakemake --report report.html`.


rule report:
    input:
        unpack(report_inputs),
    output:
        **{
            f"{name}_{ext}": report(f"{RESULTS}/tables/{name}.{ext}", category="Tables", subcategory=name)
            for name in TABLES
            for ext in ("md", "csv", "tex")
        },
        **{name: report(f"{RESULTS}/plots/{name}.png", category="Plots") for name in PLOTS},
        summary=report(f"{RESULTS}/tables/summary.md", category="Tables"),
        metrics_jsonl=f"{RESULTS}/tables/metrics.jsonl",
    log:
        f"{RESULTS}/logs/report/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/report.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=scaled_runtime(20),
    params:
        cfg=report_cfg,
        inputs=input_json,
        tables=parent_of("summary"),
        plots=parent_of("fewshot_accuracy"),
    shell:
        "{PY:q} -m pipeline3d.stages.report --params {params.cfg:q} --inputs {params.inputs:q}"
        " --out-dir {params.tables:q} --plots-dir {params.plots:q} > {log:q} 2>&1"

# Ingest: raw archives / folders / h5 files -> one manifest per dataset.
# Outputs: results/ingest/{dataset}/manifest.parquet   one row per accepted item (stable shape id, label, sha256, sizes)
#          results/ingest/{dataset}/rejects.parquet    one row per refused item or archive (source, stage, reason, detail)
#          results/ingest/{dataset}/items.h5           the validated payloads, in manifest order (pipeline3d.io.itemstore)

# A raw path that is missing or unreadable is a config error before anything runs (after a first build Snakemake
# would otherwise keep the old manifest). The demo generator's outputs are made by the workflow itself.
_problems = raw_input_problems(DATASETS, rules.make_demo_data.output if config["demo"]["enabled"] else [])
if _problems:
    raise WorkflowError("raw inputs missing or unreadable:\n  " + "\n  ".join(_problems))


rule ingest_dataset:
    input:
        raw=get_raw_inputs,
    output:
        manifest=f"{RESULTS}/ingest/{{dataset}}/manifest.parquet",
        rejects=f"{RESULTS}/ingest/{{dataset}}/rejects.parquet",
        store=f"{RESULTS}/ingest/{{dataset}}/items.h5",
    log:
        f"{RESULTS}/logs/ingest_dataset/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ingest_dataset/{{dataset}}.tsv"
    priority: PRIORITY_DATA
    threads: config["ingest"]["workers"]
    resources:
        mem_mb=4000,
        runtime=scaled_runtime(120),
    params:
        cfg=ingest_params,
    shell:
        "{PY:q} -m pipeline3d.stages.ingest_dataset --params {params.cfg:q}"
        " --manifest {output.manifest:q} --rejects {output.rejects:q} --items {output.store:q} > {log:q} 2>&1"

# Demo data: a small labeled data set generated procedurally from the seed (no downloads, ever).
# Outputs (under config demo.out_dir, default resources/demo):
#   demo_meshes.tar.gz                                   ShapeNetCore.v2 layout: <class>/<model>/models/model_normalized.obj
#   demo_scans/main_split_nobg/{training,test}_objectdataset.h5   ScanObjectNN layout (data, label, mask)
#   demo_scans/main_split_nobg/shape_names.txt                    label names, one per line (index = label)
#   demo_images.tar                                      <key>.png + <key>.json depth views
DEMO = Path(config["demo"]["out_dir"])

if config["demo"]["enabled"]:

    rule make_demo_data:
        output:
            meshes=str(DEMO / "demo_meshes.tar.gz"),
            scans_train=str(DEMO / "demo_scans/main_split_nobg/training_objectdataset.h5"),
            scans_test=str(DEMO / "demo_scans/main_split_nobg/test_objectdataset.h5"),
            scan_names=str(DEMO / "demo_scans/main_split_nobg/shape_names.txt"),
            images=str(DEMO / "demo_images.tar"),
        log:
            f"{RESULTS}/logs/make_demo_data/make_demo_data.log",
        benchmark:
            f"{RESULTS}/benchmarks/make_demo_data/make_demo_data.tsv"
        priority: PRIORITY_DATA
        threads: 1
        resources:
            mem_mb=2000,
            runtime=scaled_runtime(20),
        params:
            cfg=stage_params("make_demo_data", {"seed": config["seed"], **config["demo"]}),
        shell:
            "{PY:q} -m pipeline3d.stages.make_demo_data --params {params.cfg:q}"
            " --meshes {output.meshes:q} --scans-train {output.scans_train:q} --scans-test {output.scans_test:q}"
            " --images {output.images:q} > {log:q} 2>&1"

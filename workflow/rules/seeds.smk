# Stage 4: CAM seeds. Eq. (1) with fg/bg thresholds 0.30/0.05, each level refined by a dense
# CRF (IRNet's cam_to_ir_label); one job and one HDF5 file per CAM shard.


rule make_seeds:
    input:
        cam=f"{RESULTS}/cam/{{scatteritem}}.h5",
    output:
        seeds=f"{RESULTS}/seeds/{{scatteritem}}.h5",
    params:
        cfg={
            "dataset": dataset_params(),
            "fg_threshold": config["seeds"]["fg_threshold"],
            "bg_threshold": config["seeds"]["bg_threshold"],
            "crf": dict(config["seeds"]["crf"]),
            "compression": config["artifacts"]["compression"],
        },
    log:
        f"{LOGS}/make_seeds_{{scatteritem}}.log",
    benchmark:
        f"{BENCH}/make_seeds_{{scatteritem}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"

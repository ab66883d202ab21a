# Stage 1: the dataset. The demo dataset is generated; every dataset is validated once,
# and the manifest (ids, sizes, image-level labels) is what later stages read.


rule demo_data:
    output:
        root=directory(config["data"]["root"]),
        preview=f"{RESULTS}/figures/demo_preview.png",
    params:
        cfg={
            "generator": {
                k: config["demo"][k]
                for k in ("seed", "n_train", "n_val", "min_side", "max_side", "void_width", "max_objects")
            },
            "preview_samples": config["demo"]["preview_samples"],
        },
    log:
        f"{LOGS}/demo_data.log",
    benchmark:
        f"{BENCH}/demo_data.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule validate_dataset:
    input:
        dataset=dataset_source(),
    output:
        manifest=manifest(),
    params:
        cfg={
            "name": DATASET,
            "dataset": dataset_params(),
            "splits": splits(),
            "on_bad_image": config["data"]["on_bad_image"],
        },
    log:
        f"{LOGS}/validate_dataset.log",
    benchmark:
        f"{BENCH}/validate_dataset.tsv"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule shard_ids:
    input:
        manifest=manifest(),
    output:
        shards=scatter.shard(f"{RESULTS}/shards/{{{{split}}}}/{{scatteritem}}.txt"),
    params:
        cfg=lambda wc: {"split": wc.split},
    log:
        f"{LOGS}/shard_ids_{{split}}.log",
    benchmark:
        f"{BENCH}/shard_ids_{{split}}.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"

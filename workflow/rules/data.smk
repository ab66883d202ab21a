# Stage 1: the dataset. The demo dataset is generated; every dataset is validated once,
# and the manifest (ids, sizes, image-level labels) is what later stages read.


rule demo_data:
    output:
        root=directory(config["data"]["root"]),
        preview=f"{SHARED}/figures/demo_preview.png",
    log:
        f"{SHARED_LOGS}/demo_data.log",
    benchmark:
        f"{SHARED_BENCH}/demo_data.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        cfg={
            "generator": {
                k: config["demo"][k]
                for k in ("seed", "n_train", "n_val", "min_side", "max_side", "void_width", "max_objects")
            },
            "preview_samples": config["demo"]["preview_samples"],
        },
    script:
        "../scripts/run_stage.py"


rule validate_dataset:
    input:
        dataset=dataset_source(),
    output:
        manifest=manifest(),
    log:
        f"{SHARED_LOGS}/validate_dataset.log",
    benchmark:
        f"{SHARED_BENCH}/validate_dataset.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        cfg={
            "name": DATASET,
            "dataset": dataset_params(),
            "splits": splits(),
            "on_bad_image": config["data"]["on_bad_image"],
        },
    script:
        "../scripts/run_stage.py"


rule shard_ids:
    input:
        manifest=manifest(),
    output:
        shards=scatter.shard(f"{SHARED}/shards/{{{{split}}}}/{{scatteritem}}.txt"),
    log:
        f"{SHARED_LOGS}/shard_ids_{{split}}.log",
    benchmark:
        f"{SHARED_BENCH}/shard_ids_{{split}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        cfg=lambda wc: {"split": wc.split},
    script:
        "../scripts/run_stage.py"

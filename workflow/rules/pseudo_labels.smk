# Stage 6: pseudo labels of each mode. Per shard: TTA maps of the SANCE model, then score
# propagation along the contour map + background constant + arg-max (HDF5); then the palette
# PNGs of all shards and the train-split mIoU. Params are built in common.smk.

PL_TRAIN = config["data"]["train_split"]


rule infer_maps:
    input:
        model=f"{RESULTS}/{{mode}}/sance_model/model.pt",
        config=f"{RESULTS}/{{mode}}/sance_model/config.json",
        shard=f"{RESULTS}/shards/{PL_TRAIN}/{{shard}}.txt",
        manifest=manifest(),
    output:
        maps=f"{RESULTS}/{{mode}}/maps/{{shard}}.h5",
    wildcard_constraints:
        mode=SANCE_MODE_RE,
        shard=r"[0-9]+-of-[0-9]+",
    params:
        cfg=lambda wc: infer_maps_params(wc.mode),
    log:
        f"{LOGS}/infer_maps_{{mode}}_{{shard}}.log",
    benchmark:
        f"{BENCH}/infer_maps_{{mode}}_{{shard}}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
        gpu=gpu_resources(),
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule make_pseudo_labels:
    input:
        unpack(make_pseudo_labels_inputs),
    output:
        labels=f"{RESULTS}/{{mode}}/pseudo_labels/{{shard}}.h5",
    wildcard_constraints:
        mode=SANCE_MODE_RE,
        shard=r"[0-9]+-of-[0-9]+",
    params:
        cfg=lambda wc: make_pseudo_labels_params(wc.mode),
    log:
        f"{LOGS}/make_pseudo_labels_{{mode}}_{{shard}}.log",
    benchmark:
        f"{BENCH}/make_pseudo_labels_{{mode}}_{{shard}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule export_pseudo_label_pngs:
    input:
        labels=scatter.shard(f"{RESULTS}/{{{{mode}}}}/pseudo_labels/{{scatteritem}}.h5"),
    output:
        png=directory(f"{RESULTS}/{{mode}}/pseudo_labels/png"),
    wildcard_constraints:
        mode=SANCE_MODE_RE,
    params:
        cfg=lambda wc: {"mode": wc.mode},
    log:
        f"{LOGS}/export_pseudo_label_pngs_{{mode}}.log",
    benchmark:
        f"{BENCH}/export_pseudo_label_pngs_{{mode}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=20,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule evaluate_pseudo_labels:
    input:
        manifest=manifest(),
        labels=scatter.shard(f"{RESULTS}/{{{{mode}}}}/pseudo_labels/{{scatteritem}}.h5"),
    output:
        json=f"{RESULTS}/{{mode}}/eval/pseudo_labels.json",
        tsv=f"{RESULTS}/{{mode}}/eval/pseudo_labels.tsv",
    wildcard_constraints:
        mode=SANCE_MODE_RE,
    params:
        cfg=lambda wc: {
            "dataset": dataset_params(),
            "mode": wc.mode,
            "split": PL_TRAIN,
            "map": pseudo_label_map(wc.mode),
            "tau_b": config["pseudo_labels"]["tau_b"],
        },
    log:
        f"{LOGS}/evaluate_pseudo_labels_{{mode}}.log",
    benchmark:
        f"{BENCH}/evaluate_pseudo_labels_{{mode}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"

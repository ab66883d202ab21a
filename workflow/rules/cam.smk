# Stage 3: multi-scale CAMs of the training split (IRNet's make_cam), one job and one HDF5 file
# per shard of ids; `--set-scatter shard=N` changes the number of jobs. Consumers take a single
# shard by name or all of them with cam_shards().


rule extract_cams:
    input:
        shard=f"{SHARED}/shards/{config['data']['train_split']}/{{scatteritem}}.txt",
        model=f"{SHARED}/classifier/model.pt",
        model_config=f"{SHARED}/classifier/config.json",
        manifest=manifest(),
    output:
        cam=f"{SHARED}/cam/{{scatteritem}}.h5",
    log:
        f"{SHARED_LOGS}/extract_cams_{{scatteritem}}.log",
    benchmark:
        f"{SHARED_BENCH}/extract_cams_{{scatteritem}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
    params:
        cfg=cam_params(),
    script:
        "../scripts/run_stage.py"

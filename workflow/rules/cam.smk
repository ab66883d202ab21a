# Stage 3: multi-scale CAMs of the training split (IRNet's make_cam), one job and one HDF5 file
# per shard of ids; `--set-scatter shard=N` changes the number of jobs. Consumers take a single
# shard by name or all of them with cam_shards().


rule extract_cams:
    input:
        shard=f"{RESULTS}/shards/{config['data']['train_split']}/{{scatteritem}}.txt",
        model=f"{RESULTS}/classifier/model.pt",
        model_config=f"{RESULTS}/classifier/config.json",
        manifest=manifest(),
    output:
        cam=f"{RESULTS}/cam/{{scatteritem}}.h5",
    params:
        cfg=cam_params(),
    log:
        f"{LOGS}/extract_cams_{{scatteritem}}.log",
    benchmark:
        f"{BENCH}/extract_cams_{{scatteritem}}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"

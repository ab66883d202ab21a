# Stage 4: CAM seeds. Eq. (1) with fg/bg thresholds 0.30/0.05, each level refined by a dense
# CRF (IRNet's cam_to_ir_label); one job and one HDF5 file per CAM shard.
# seeds.source 'oracle': the seeds come from the ground-truth masks instead
# (sance_core.ops.oracle_seeds), written under the oracle run's own RESULTS folder.


rule make_seeds:
    input:
        unpack(make_seeds_inputs),
    output:
        seeds=f"{RESULTS}/seeds/{{scatteritem}}.h5",
    log:
        f"{LOGS}/make_seeds_{{scatteritem}}.log",
    benchmark:
        f"{BENCH}/make_seeds_{{scatteritem}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        cfg=make_seeds_params(),
    script:
        "../scripts/run_stage.py"

# Stage 5: the SANCE model of each mode (irnet, sance_naive, sance), trained on the CAM seeds
# (and online labels). Params are built in common.smk (sance_train_params); checkpoints for
# resuming live in results/<name>/.resume/<mode>/, outside the declared outputs.


rule train_sance:
    input:
        unpack(sance_train_inputs),
    output:
        model=f"{RESULTS}/{{mode}}/sance_model/model.pt",
        config=f"{RESULTS}/{{mode}}/sance_model/config.json",
        history=f"{RESULTS}/{{mode}}/sance_model/history.csv",
        curve=report(f"{RESULTS}/{{mode}}/sance_model/curve.png", caption="../report/sance_curve.rst",
                     category="SANCE", labels={"mode": "{mode}"}),
    wildcard_constraints:
        mode=SANCE_MODE_RE,
    params:
        cfg=lambda wc: sance_train_params(wc.mode),
    log:
        f"{LOGS}/train_sance_{{mode}}.log",
    benchmark:
        f"{BENCH}/train_sance_{{mode}}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=240,
        gpu=gpu_resources(),
    conda:
        ENV
    script:
        "../scripts/run_stage.py"

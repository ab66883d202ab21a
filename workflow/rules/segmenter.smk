# Stage 7: DeepLab-v2 trained on the pseudo labels of each mode (or on the ground truth for the
# fully supervised upper bound), multi-scale inference on the val split, one shard per job,
# and the val mIoU of each mode. Params are built in common.smk (segmenter_*_params).

SEG_VAL = config["data"]["val_split"]


rule train_segmenter:
    input:
        unpack(segmenter_train_inputs),
    output:
        model=f"{RESULTS}/{{mode}}/segmenter/model.pt",
        config=f"{RESULTS}/{{mode}}/segmenter/config.json",
        history=f"{RESULTS}/{{mode}}/segmenter/history.csv",
        curve=report(f"{RESULTS}/{{mode}}/segmenter/curve.png", caption="../report/segmenter_curve.rst",
                     category="Training", subcategory="DeepLab", labels={"mode": "{mode}"}),
    params:
        cfg=lambda wc: segmenter_train_params(wc.mode),
    log:
        f"{LOGS}/train_segmenter_{{mode}}.log",
    benchmark:
        f"{BENCH}/train_segmenter_{{mode}}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=240,
        gpu=gpu_resources(),
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule predict_segmenter:
    input:
        model=f"{RESULTS}/{{mode}}/segmenter/model.pt",
        config=f"{RESULTS}/{{mode}}/segmenter/config.json",
        ids=f"{RESULTS}/shards/{SEG_VAL}/{{shard}}.txt",
    output:
        predictions=f"{RESULTS}/{{mode}}/predictions/{{shard}}.h5",
    wildcard_constraints:
        shard=r"[0-9]+-of-[0-9]+",
    params:
        cfg=lambda wc: segmenter_predict_params(wc.mode),
    log:
        f"{LOGS}/predict_segmenter_{{mode}}_{{shard}}.log",
    benchmark:
        f"{BENCH}/predict_segmenter_{{mode}}_{{shard}}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=120,
        gpu=gpu_resources(),
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule evaluate_segmenter:
    input:
        manifest=manifest(),
        predictions=scatter.shard(f"{RESULTS}/{{{{mode}}}}/predictions/{{scatteritem}}.h5"),
    output:
        json=report(f"{RESULTS}/{{mode}}/eval/segmentation.json", caption="../report/eval_segmentation.rst",
                    category="Evaluation", subcategory="DeepLab", labels={"mode": "{mode}", "file": "json"}),
        tsv=report(f"{RESULTS}/{{mode}}/eval/segmentation.tsv", caption="../report/eval_segmentation.rst",
                   category="Evaluation", subcategory="DeepLab", labels={"mode": "{mode}", "file": "tsv"}),
    params:
        cfg=lambda wc: {"dataset": dataset_params(), "mode": wc.mode, "split": SEG_VAL},
    log:
        f"{LOGS}/evaluate_segmenter_{{mode}}.log",
    benchmark:
        f"{BENCH}/evaluate_segmenter_{{mode}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"

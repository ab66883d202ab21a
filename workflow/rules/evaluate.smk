# Stage 8: evaluation. One confusion matrix over the whole split (255 ignored), streamed image
# by image. CAMs and seeds are evaluated on the train split they are computed for; later
# stages add their evaluations below or in their own rule files.

EVAL_DIR = f"{RESULTS}/eval"


rule evaluate_cams:
    input:
        manifest=manifest(),
        cams=gather.shard(f"{RESULTS}/cam/{{scatteritem}}.h5"),
    output:
        json=report(f"{EVAL_DIR}/cam.json", category="Evaluation", subcategory="CAMs",
                    caption="../report/eval_cam.rst"),
        tsv=report(f"{EVAL_DIR}/cam.tsv", category="Evaluation", subcategory="CAMs",
                   caption="../report/eval_cam.rst"),
        curve=report(f"{EVAL_DIR}/cam_threshold_curve.png", category="Evaluation", subcategory="CAMs",
                     caption="../report/eval_cam_curve.rst"),
    params:
        cfg={
            "dataset": dataset_params(),
            "split": config["data"]["train_split"],
            "thresholds": list(config["evaluation"]["cam_thresholds"]),
        },
    log:
        f"{LOGS}/evaluate_cams.log",
    benchmark:
        f"{BENCH}/evaluate_cams.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule evaluate_seeds:
    input:
        manifest=manifest(),
        seeds=gather.shard(f"{RESULTS}/seeds/{{scatteritem}}.h5"),
    output:
        json=report(f"{EVAL_DIR}/seeds.json", category="Evaluation", subcategory="Seeds",
                    caption="../report/eval_seeds.rst"),
        tsv=report(f"{EVAL_DIR}/seeds.tsv", category="Evaluation", subcategory="Seeds",
                   caption="../report/eval_seeds.rst"),
    params:
        cfg={"dataset": dataset_params(), "split": config["data"]["train_split"]},
    log:
        f"{LOGS}/evaluate_seeds.log",
    benchmark:
        f"{BENCH}/evaluate_seeds.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"

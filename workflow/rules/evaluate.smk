# Stage 8: evaluation. One confusion matrix over the whole split (255 ignored), streamed image
# by image. CAMs and seeds are evaluated on the train split they are computed for; the classifier
# on the val split it did not train on, from the image tags alone (no masks needed); later
# stages add their evaluations below or in their own rule files.

EVAL_DIR = f"{RESULTS}/eval"
CAM_EVAL_DIR = f"{SHARED}/eval"  # the CAMs are shared by CAM and oracle seed runs


rule evaluate_classifier:
    input:
        manifest=manifest(),
        model=f"{SHARED}/classifier/model.pt",
    output:
        json=report(
            f"{CAM_EVAL_DIR}/classifier.json",
            category="Evaluation",
            subcategory="Classifier",
            caption="../report/eval_classifier.rst",
        ),
        tsv=report(
            f"{CAM_EVAL_DIR}/classifier.tsv",
            category="Evaluation",
            subcategory="Classifier",
            caption="../report/eval_classifier.rst",
        ),
    log:
        f"{SHARED_LOGS}/evaluate_classifier.log",
    benchmark:
        f"{SHARED_BENCH}/evaluate_classifier.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
        gpu=gpu_resources(),
    params:
        cfg=classifier_eval_params(),
    script:
        "../scripts/run_stage.py"


rule evaluate_cams:
    input:
        manifest=manifest(),
        cams=gather.shard(f"{SHARED}/cam/{{scatteritem}}.h5"),
    output:
        json=report(
            f"{CAM_EVAL_DIR}/cam.json", category="Evaluation", subcategory="CAMs", caption="../report/eval_cam.rst"
        ),
        tsv=report(
            f"{CAM_EVAL_DIR}/cam.tsv", category="Evaluation", subcategory="CAMs", caption="../report/eval_cam.rst"
        ),
        curve=report(
            f"{CAM_EVAL_DIR}/cam_threshold_curve.png",
            category="Evaluation",
            subcategory="CAMs",
            caption="../report/eval_cam_curve.rst",
        ),
    log:
        f"{SHARED_LOGS}/evaluate_cams.log",
    benchmark:
        f"{SHARED_BENCH}/evaluate_cams.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        cfg={
            "dataset": dataset_params(),
            "split": config["data"]["train_split"],
            "thresholds": list(config["evaluation"]["cam_thresholds"]),
        },
    script:
        "../scripts/run_stage.py"


rule evaluate_seeds:
    input:
        manifest=manifest(),
        seeds=gather.shard(f"{RESULTS}/seeds/{{scatteritem}}.h5"),
    output:
        json=report(
            f"{EVAL_DIR}/seeds.json", category="Evaluation", subcategory="Seeds", caption="../report/eval_seeds.rst"
        ),
        tsv=report(
            f"{EVAL_DIR}/seeds.tsv", category="Evaluation", subcategory="Seeds", caption="../report/eval_seeds.rst"
        ),
    log:
        f"{LOGS}/evaluate_seeds.log",
    benchmark:
        f"{BENCH}/evaluate_seeds.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        cfg={"dataset": dataset_params(), "split": config["data"]["train_split"]},
    script:
        "../scripts/run_stage.py"

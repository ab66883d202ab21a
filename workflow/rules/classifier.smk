# Stage 2: the multi-label classifier whose CAMs seed everything after it (IRNet's train_cam).
# Checkpoints for resuming go to results/<name>/.resume/classifier/, outside the outputs,
# so a killed job continues where it stopped instead of starting over.


rule train_classifier:
    input:
        manifest=manifest(),
    output:
        model=f"{SHARED}/classifier/model.pt",
        config=f"{SHARED}/classifier/config.json",
        history=f"{SHARED}/classifier/history.csv",
        curve=report(
            f"{SHARED}/classifier/curve.png",
            caption="../report/classifier_curve.rst",
            category="Training",
            subcategory="Classifier",
        ),
    log:
        f"{SHARED_LOGS}/train_classifier.log",
    benchmark:
        f"{SHARED_BENCH}/train_classifier.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=gpu_resources(),
    params:
        cfg=classifier_params(),
    script:
        "../scripts/run_stage.py"

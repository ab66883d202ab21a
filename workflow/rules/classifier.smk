# Stage 2: the multi-label classifier whose CAMs seed everything after it (IRNet's train_cam).
# Checkpoints for resuming go to results/<name>/.resume/classifier/, outside the outputs,
# so a killed job continues where it stopped instead of starting over.


rule train_classifier:
    input:
        manifest=manifest(),
    output:
        model=f"{RESULTS}/classifier/model.pt",
        config=f"{RESULTS}/classifier/config.json",
        history=f"{RESULTS}/classifier/history.csv",
        curve=report(f"{RESULTS}/classifier/curve.png", caption="../report/classifier_curve.rst",
                     category="Training", subcategory="Classifier"),
    params:
        cfg=classifier_params(),
    log:
        f"{LOGS}/train_classifier.log",
    benchmark:
        f"{BENCH}/train_classifier.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=gpu_resources(),
    conda:
        ENV
    script:
        "../scripts/run_stage.py"

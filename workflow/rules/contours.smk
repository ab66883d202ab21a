# Stage 8, contours, by the paper's protocol (Table 2): the raw single-scale contour maps of each
# mode's trained model (not the test-time-augmented pseudo-label maps), inferred for the images of
# evaluation.contour.id_list (VOC: SBD's val.txt, 2,857 images outside train_aug) or, without a
# list, of the val split (the demo); then ODS / OIS / AP and the precision-recall curve (BSDS/SBD
# matching of thinned maps against class-agnostic boundaries, 99 thresholds, max_dist 0.02).
# Settings: config["evaluation"]["contour"]; params built in common.smk.


rule infer_contours:
    input:
        unpack(contour_maps_inputs),
    output:
        contours=f"{RESULTS}/{{mode}}/contours/eval.h5",
    log:
        f"{LOGS}/infer_contours_{{mode}}.log",
    benchmark:
        f"{BENCH}/infer_contours_{{mode}}.tsv"
    wildcard_constraints:
        mode=SANCE_MODE_RE,
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=2000,
        runtime=60,
        gpu=gpu_resources(),
    params:
        cfg=lambda wc: contour_maps_params(wc.mode),
    script:
        "../scripts/run_stage.py"


rule evaluate_contours:
    input:
        manifest=manifest(),
        contours=f"{RESULTS}/{{mode}}/contours/eval.h5",
    output:
        json=report(
            f"{RESULTS}/{{mode}}/eval/contour.json",
            caption="../report/eval_contour.rst",
            category="Evaluation",
            subcategory="Contours",
            labels={"mode": "{mode}", "file": "contour.json"},
        ),
        curve=f"{RESULTS}/{{mode}}/eval/contour_pr.tsv",
    log:
        f"{LOGS}/evaluate_contours_{{mode}}.log",
    benchmark:
        f"{BENCH}/evaluate_contours_{{mode}}.tsv"
    wildcard_constraints:
        mode=SANCE_MODE_RE,
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        cfg=lambda wc: contour_eval_params(wc.mode),
    script:
        "../scripts/run_stage.py"

# Stage 8, contours: ODS / OIS / AP and the precision-recall curve of each mode's contour maps
# (BSDS/SBD matching of thinned maps against class-agnostic ground-truth boundaries).
# Settings: config["evaluation"]["contour"]; params built in common.smk (contour_eval_params).


rule evaluate_contours:
    input:
        manifest=manifest(),
        maps=scatter.shard(f"{RESULTS}/{{{{mode}}}}/maps/{{scatteritem}}.h5"),
    output:
        json=report(f"{RESULTS}/{{mode}}/eval/contour.json", caption="../report/eval_contour.rst",
                    category="Evaluation", subcategory="Contours", labels={"mode": "{mode}", "file": "contour.json"}),
        curve=f"{RESULTS}/{{mode}}/eval/contour_pr.tsv",
    wildcard_constraints:
        mode=SANCE_MODE_RE,
    params:
        cfg=lambda wc: contour_eval_params(wc.mode),
    log:
        f"{LOGS}/evaluate_contours_{{mode}}.log",
    benchmark:
        f"{BENCH}/evaluate_contours_{{mode}}.tsv"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"

# The run's results for people: a summary per mode, the ablation table across modes (the
# paper's Table 1 + contour ODS) and the figures of `snakemake --report report.html`.
# Named target: `snakemake ablation`. Helpers and params in common.smk; code in
# sance_core/stages/summary.py and sance_core/stages/figures.py.

FIGURES = f"{RESULTS}/figures"


rule summarize:
    input:
        unpack(summary_inputs),
    output:
        json=f"{RESULTS}/{{mode}}/summary.json",
        tsv=report(f"{RESULTS}/{{mode}}/summary.tsv", caption="../report/summary.rst", category="Results",
                   subcategory="Per mode", labels={"mode": "{mode}"}),
    params:
        cfg=lambda wc: summary_params(wc.mode),
    log:
        f"{LOGS}/summarize_{{mode}}.log",
    benchmark:
        f"{BENCH}/summarize_{{mode}}.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule ablation_table:
    input:
        summaries=[f"{mode_dir(m)}/summary.json" for m in ablation_modes()],
    output:
        tsv=report(f"{RESULTS}/ablation.tsv", caption="../report/ablation.rst", category="Results",
                   subcategory="Ablation", labels={"table": "ablation", "format": "TSV"}),
        md=f"{RESULTS}/ablation.md",
        html=report(f"{RESULTS}/ablation.html", caption="../report/ablation.rst", category="Results",
                    subcategory="Ablation", labels={"table": "ablation", "format": "HTML"}),
    params:
        cfg={"modes": ablation_modes(), "title": f"{DATASET}: ablation (paper Table 1 layout)"},
    log:
        f"{LOGS}/ablation_table.log",
    benchmark:
        f"{BENCH}/ablation_table.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule ablation:
    input:
        rules.ablation_table.output,


rule figure_qualitative:
    input:
        unpack(qualitative_inputs),
    output:
        png=report(f"{FIGURES}/qualitative_{{grid}}.png", caption="../report/qualitative.rst",
                   category="Qualitative", subcategory="{grid} split", labels={"split": "{grid}"}),
    wildcard_constraints:
        grid="train|val",
    params:
        cfg=lambda wc: qualitative_params(wc.grid),
    log:
        f"{LOGS}/figure_qualitative_{{grid}}.log",
    benchmark:
        f"{BENCH}/figure_qualitative_{{grid}}.tsv"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule figure_iou_bars:
    input:
        unpack(iou_bars_inputs),
    output:
        png=report(f"{FIGURES}/per_class_iou.png", caption="../report/per_class_iou.rst",
                   category="Evaluation", subcategory="Per-class IoU", labels={"figure": "per-class IoU"}),
    params:
        cfg={"classes": list(config["data"]["classes"]), "dpi": config["report"]["dpi"]},
    log:
        f"{LOGS}/figure_iou_bars.log",
    benchmark:
        f"{BENCH}/figure_iou_bars.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule figure_pr_curves:
    input:
        **{f"contour__{m}": f"{mode_dir(m)}/eval/contour.json" for m in sance_modes()},
    output:
        png=report(f"{FIGURES}/contour_pr.png", caption="../report/contour_pr.rst", category="Evaluation",
                   subcategory="Contours", labels={"mode": "all", "file": "PR curves"}),
    params:
        cfg={"dpi": config["report"]["dpi"]},
    log:
        f"{LOGS}/figure_pr_curves.log",
    benchmark:
        f"{BENCH}/figure_pr_curves.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"


rule figure_training_curves:
    input:
        unpack(training_history_inputs),
    output:
        png=report(f"{FIGURES}/training_curves.png", caption="../report/training_curves.rst",
                   category="Training", subcategory="All models", labels={"figure": "losses of every model"}),
    params:
        cfg={"dpi": config["report"]["dpi"]},
    log:
        f"{LOGS}/figure_training_curves.log",
    benchmark:
        f"{BENCH}/figure_training_curves.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../scripts/run_stage.py"

"""The ``sance`` command line: every pipeline stage, usable without Snakemake."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("sance")

# subcommand name -> (function that adds its arguments, function that runs it)
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str):
    """Register a subcommand; its function gets ``(parser)`` to add arguments, returns the runner."""
    def wrap(add_arguments: Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]):
        _COMMANDS[name] = (help, add_arguments, None)  # type: ignore[assignment]
        return add_arguments
    return wrap


def _pairs(values: list[str] | None, flag: str) -> dict[str, Any]:
    """Parse ``name=path`` pairs; a name given twice becomes a list (for sharded inputs)."""
    result: dict[str, Any] = {}
    for item in values or []:
        if "=" not in item:
            raise SystemExit(f"sance: {flag} expects name=path, got {item!r}")
        name, value = item.split("=", 1)
        if name in result:
            result[name] = (result[name] if isinstance(result[name], list) else [result[name]]) + [value]
        else:
            result[name] = value
    return result


def _load_params(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"sance: params file {p} not found")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"sance: params file {p} must hold a mapping of config keys")
    return data


@command("run", "run one pipeline stage from a params file (what each Snakemake rule does)")
def _run(p: argparse.ArgumentParser):
    p.add_argument("stage", help="stage name (see `sance stages`)")
    p.add_argument("--params", help="YAML/JSON file with the stage config")
    p.add_argument("--input", "-i", action="append", metavar="NAME=PATH", help="named input (repeatable)")
    p.add_argument("--output", "-o", action="append", metavar="NAME=PATH", help="named output (repeatable)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--show-config", action="store_true", help="print the stage config with defaults and exit")

    def run(args: argparse.Namespace) -> int:
        from sance_core.config import from_dict, to_dict
        from sance_core.runtime import set_threads
        from sance_core.stages import get_stage, run_stage

        params = _load_params(args.params)
        if args.show_config:
            config_cls, _ = get_stage(args.stage)
            print(json.dumps(to_dict(from_dict(config_cls, params)), indent=2))
            return 0
        set_threads(args.threads)
        run_stage(args.stage, params, _pairs(args.input, "--input"), _pairs(args.output, "--output"))
        return 0
    return run


@command("stages", "list the pipeline stages")
def _stages(p: argparse.ArgumentParser):
    def run(args: argparse.Namespace) -> int:
        from sance_core.stages import STAGES

        for name, entry in sorted(STAGES.items()):
            print(f"{name:24s} {entry.help}")
        return 0
    return run


@command("demo-data", "generate the demo dataset (PASCAL VOC layout)")
def _demo(p: argparse.ArgumentParser):
    p.add_argument("root", nargs="?", default="resources/demo", help="output folder (default resources/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-val", type=int)
    p.add_argument("--preview", nargs="?", const="demo_preview.png", metavar="PNG",
                   help="also (or, with an existing root, only) render a picture of samples with masks")
    p.add_argument("--stats", action="store_true",
                   help="print the dataset's statistics (foreground fraction, objects per image, object size "
                        "in stride-4 grid cells, discriminative-part fraction, class co-occurrence)")
    p.add_argument("--split", choices=("train", "val"), help="--stats of one split only (default: all images)")

    def run(args: argparse.Namespace) -> int:
        from dataclasses import replace

        from sance_core.data.demo import DemoDataConfig, generate_demo_dataset, render_preview

        root = Path(args.root)
        if not (root / "ImageSets").is_dir() or args.n_train or args.n_val:
            cfg = DemoDataConfig(seed=args.seed)
            if args.n_train:
                cfg = replace(cfg, n_train=args.n_train)
            if args.n_val:
                cfg = replace(cfg, n_val=args.n_val)
            generate_demo_dataset(cfg, root)
            log.info("demo dataset written to %s", root)
        if args.preview:
            render_preview(root, Path(args.preview))
            log.info("preview written to %s", args.preview)
        if args.stats:
            from sance_core.data.demo import demo_statistics, format_statistics

            print(format_statistics(demo_statistics(root, args.split)))
        return 0
    return run


@command("inspect", "list, summarise or render an HDF5 artifact")
def _inspect(p: argparse.ArgumentParser):
    p.add_argument("file", help="an artifact .h5 file")
    p.add_argument("id", nargs="?", help="image id to summarise or render")
    p.add_argument("--png", help="render the entry to this PNG (needs an id)")
    p.add_argument("--max-ids", type=int, default=20, help="ids listed without an id argument")

    def run(args: argparse.Namespace) -> int:
        from sance_core.io.inspect import describe_array, render, summarise
        from sance_core.io.store import ArtifactReader

        if args.id is None:
            if args.png:
                raise SystemExit("sance inspect: --png needs an image id")
            print(summarise(args.file, args.max_ids))
            return 0
        with ArtifactReader(args.file) as reader:
            arrays = reader.read(args.id)
            print(f"{args.file} : {args.id}  " + "  ".join(f"{k}={v}" for k, v in reader.image_attrs(args.id).items()))
            for name, array in arrays.items():  # type: ignore[union-attr]
                print("  " + describe_array(name, array))
        if args.png:
            print(render(args.file, args.id, args.png))
        return 0
    return run


@command("check-config", "check that config files are valid YAML (file, line and column of the first error)")
def _check_config(p: argparse.ArgumentParser):
    p.add_argument("files", nargs="+", metavar="FILE", help="config YAML files (config.yaml, --configfile ones)")

    def run(args: argparse.Namespace) -> int:
        from sance_core.config_checks import yaml_syntax_error

        errors = [e for e in map(yaml_syntax_error, args.files) if e is not None]
        for error in errors:
            print(error)
        return 1 if errors else 0
    return run


@command("workflow", "run Snakemake on this workflow after checking the YAML of every --configfile "
                     "(sance workflow --cores 2 --configfile my.yaml)")
def _workflow(p: argparse.ArgumentParser):
    p.add_argument("snakemake_args", nargs=argparse.REMAINDER, metavar="SNAKEMAKE_ARGS",
                   help="Snakemake's arguments, passed on unchanged")

    def run(args: argparse.Namespace) -> int:
        return run_workflow(args.snakemake_args)
    return run


def run_workflow(snakemake_args: list[str]) -> int:
    """Check each ``--configfile`` of a Snakemake command line, then replace this process by Snakemake.

    Snakemake reads ``--configfile`` files before the workflow starts and says only "Config file
    is not valid JSON or YAML"; here a syntax error is named by file, line and column and nothing
    runs (exit 2). The arguments reach Snakemake unchanged.
    """
    import os
    import shutil

    from sance_core.config_checks import configfile_args, yaml_syntax_error

    errors = [e for e in map(yaml_syntax_error, configfile_args(snakemake_args)) if e is not None]
    for error in errors:
        log.error("%s", error)
    if errors:
        return 2
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    exe = shutil.which("snakemake", path=search)
    if exe is None:
        log.error("snakemake not found next to %s or on PATH (install the workflow's environment: make venv)",
                  sys.executable)
        return 2
    os.execv(exe, [exe, *snakemake_args])
    return 0  # pragma: no cover (execv does not return)


@command("verify", "check every artifact of a run (HDF5 checksums, models, JSON) and say what to rebuild")
def _verify(p: argparse.ArgumentParser):
    p.add_argument("folder", help="a run's results folder, e.g. results/demo (or one file)")

    def run(args: argparse.Namespace) -> int:
        from sance_core.io.verify import verify_run

        problems, n_files = verify_run(args.folder)
        for problem in problems:
            print(problem)
        if problems:
            print(f"{len(problems)} of {n_files} artifact(s) damaged")
            return 1
        print(f"all {n_files} artifact(s) of {args.folder} are sound")
        return 0
    return run


@command("predict", "segment image files or folders with a trained segmenter (palette PNGs + overlays)")
def _predict(p: argparse.ArgumentParser):
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files and/or folders of images")
    p.add_argument("--model", required=True, help="segmenter folder (model.pt + config.json), e.g. results/demo/sance/segmenter")
    p.add_argument("--out", required=True, help="output folder for <stem>.png and <stem>_overlay.jpg")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="test scales (default 1.0)")
    p.add_argument("--flip", action="store_true", help="also average the mirrored image")
    p.add_argument("--crf", action="store_true", help="dense-CRF post-processing")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")

    def run(args: argparse.Namespace) -> int:
        from sance_core.stages.segmenter import predict_files

        try:
            records = predict_files(args.model, args.images, args.out, args.scales, args.flip, args.crf, args.device)
        except ValueError as err:  # a model folder whose config.json and weights do not fit
            log.error("%s", err)
            return 2
        print(f"wrote {len(records)} label PNGs and overlays to {args.out}")
        return 0
    return run


@command("export", "export a trained segmenter to ONNX and check it with onnxruntime")
def _export(p: argparse.ArgumentParser):
    p.add_argument("--model", required=True, help="segmenter folder (model.pt + config.json)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--height", type=int, default=321, help="height of the example input (default 321)")
    p.add_argument("--width", type=int, default=321, help="width of the example input (default 321)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (default 17)")
    p.add_argument("--static", action="store_true", help="fix the input size instead of dynamic height/width")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max |logit difference| allowed (default 1e-3)")
    p.add_argument("--image", help="check on this image (resized to height x width) instead of a random one")

    def run(args: argparse.Namespace) -> int:
        from sance_core.models.export import ExportCheckError, export_and_check

        image = None
        if args.image:
            import numpy as np

            from sance_core.data.transforms import resize_image
            from sance_core.io.images import read_image

            image = np.array(resize_image(read_image(args.image), size=(args.height, args.width)))
        try:
            report = export_and_check(args.model, args.out, args.height, args.width, args.opset,
                                      not args.static, args.tolerance, image)
        except (ValueError, ExportCheckError) as err:
            log.error("%s", err)
            return 2 if isinstance(err, ValueError) else 1
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    return run


@command("coco-masks", "convert COCO instances_*.json into VOC-layout class-mask PNGs + split lists (run once)")
def _coco_masks(p: argparse.ArgumentParser):
    p.add_argument("coco_root", help="COCO folder with annotations/instances_<split><year>.json and <split><year>/")
    p.add_argument("out", help="output dataset root (data.root of workflow/presets/coco14.yaml: resources/coco14)")
    p.add_argument("--year", default="2014", help="annotation year (default 2014)")
    p.add_argument("--splits", nargs="+", default=["train", "val"], help="splits to convert (default train val)")
    p.add_argument("--crowd", choices=["ignore", "class", "background"], default="ignore",
                   help="crowd regions become 255 (default), their class, or background")
    p.add_argument("--images", choices=["symlink", "copy", "hardlink"], default="symlink",
                   help="how JPEGImages/ gets the images (default symlink)")
    p.add_argument("--keep-unlabeled", action="store_true", help="also list images without annotations")
    p.add_argument("--overwrite", action="store_true", help="rewrite existing masks (default: resume)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")

    def run(args: argparse.Namespace) -> int:
        from sance_core.data.coco import CocoConversionConfig, convert_coco, standard_sources

        cfg = CocoConversionConfig(crowd=args.crowd, images=args.images, skip_unlabeled=not args.keep_unlabeled,
                                   overwrite=args.overwrite, workers=args.workers)
        summary = convert_coco(standard_sources(args.coco_root, args.year, args.splits), args.out, cfg)
        print(json.dumps(summary.splits, indent=1))
        print(f"{len(summary.classes) - 1} classes (list in {Path(args.out) / 'classes.txt'})")
        return 0
    return run


def build_parser() -> argparse.ArgumentParser:
    from sance_core import __version__

    parser = argparse.ArgumentParser(prog="sance", description=__doc__)
    parser.add_argument("--version", action="version", version=f"sance {__version__}")
    parser.add_argument("--log", help="also write the log to this file")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_runner=add_arguments(p))
    return parser


def main(argv: list[str] | None = None) -> int:
    from sance_core.config import ConfigError
    from sance_core.io.images import DataError
    from sance_core.io.store import ArtifactError
    from sance_core.runtime import setup_logging

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["workflow"] and argv[1:2] not in (["-h"], ["--help"]):  # Snakemake's options are not ours
        setup_logging(None, logging.INFO)
        return run_workflow(argv[1:])
    args = parser.parse_args(argv)
    setup_logging(args.log, logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args._runner(args) or 0)
    except (ConfigError, DataError, KeyError, FileNotFoundError, ArtifactError) as err:
        log.error("%s", err.args[0] if isinstance(err, KeyError) and err.args else err)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

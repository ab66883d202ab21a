"""Shared fixtures: paths to the repository, the read-only real-format fixtures, Snakemake runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent
# no network in tests: 'weights: imagenet' reads torchvision's cache or fails at once (sance_core.pretrained)
os.environ["SANCE_OFFLINE"] = "1"


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for the test: deterministic sums, and no OpenMP barrier stalls on a
    busy shared CPU. Modules that train or run networks use it for every test (``pytestmark``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def shared_data(*parts: str) -> Path:
    """A path inside ../shared/data (read in place, never copied into the repo)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            raise FileNotFoundError(f"fixture {path} is missing")
        pytest.skip(f"fixture {path} is not available")
    return path


def run_snakemake(workdir: Path, *args: str, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile with ``workdir`` as working directory.

    Each ``--configfile X`` in ``args`` is layered over the repository's config.yaml, in order
    (Snakemake's ``--configfile`` takes several values, so they are all moved to the end).
    """
    args_list, configfiles = list(args), [str(REPO / "config.yaml")]
    while "--configfile" in args_list:
        i = args_list.index("--configfile")
        configfiles.append(args_list[i + 1])
        del args_list[i:i + 2]
    cmd = [
        str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
        *args_list, "--configfile", *configfiles,
    ]
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory for a workflow run."""
    d = tmp_path / "run"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def tiny_config() -> Path:
    return REPO / "tests" / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_all_run(tmp_path_factory, tiny_config) -> Path:
    """The working directory of one whole tiny pipeline (`snakemake all`, 2 cores), run once per
    test session and shared by the tests that only read its outputs or dry-run on top of it.
    Tests that change files of a run make their own."""
    d = tmp_path_factory.mktemp("tiny_all") / "run"
    d.mkdir()
    run_snakemake(d, "all", "--cores", "2", "--configfile", str(tiny_config), timeout=1800)
    return d


def training_outputs(folder: Path) -> dict[str, str]:
    """The outputs of a training stage in ``folder``, named as the training rules name them."""
    return {name: str(Path(folder) / file) for name, file in
            (("model", "model.pt"), ("config", "config.json"), ("history", "history.csv"), ("curve", "curve.png"))}


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` imported as module ``name`` (the benchmarks are scripts, not a package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst

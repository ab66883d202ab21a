"""The SLURM profile on a real scheduler: the tiny pipeline through sbatch equals a local run.

A single-node SLURM cluster on 127.0.0.1 is started for the module (tests/slurm_cluster.py:
munged, slurmctld and slurmd as children of the test, every file under a temporary folder;
installed with apt-get when missing) and stopped afterwards. ``snakemake all`` on
tests/configs/tiny.yaml runs through a profile derived from workflow/profiles/slurm (same
executor and per-rule resource expressions; no GPU requests, memory capped to the test node,
squeue for job status because the test cluster has no accounting, 1 thread per rule) and,
side by side, locally with the same threads. Every Snakemake job must have gone through
sbatch (its SLURM job id in Snakemake's log, its SLURM log, SLURM's completion record), and
every output file must be equal in content (HDF5 datasets and attributes, image pixels,
tensors, JSON/TSV values except wall-clock fields; CPU training is bit-reproducible at a
fixed thread count, so no tolerance is used).

Root is needed to run slurmd. Under CI (CI=true) a missing prerequisite fails the test;
elsewhere it is skipped with the reason. SANCE_SKIP_SLURM=1 skips it on purpose (never in CI).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from slurm_cluster import HEADER, SlurmCluster, SlurmSetupError, SystemConfBusy, install_slurm, is_root

from conftest import BIN, REPO

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TINY = REPO / "tests" / "configs" / "tiny.yaml"
PROFILE = REPO / "workflow" / "profiles" / "slurm"
# hard limit of each run (they are killed after it): through SLURM every job also pays two
# Snakemake start-ups inside its allocation (batch step + srun step) and the polling latency
TIMEOUT = int(os.environ.get("SANCE_SLURM_TEST_TIMEOUT", "1200"))
# resource keys that only make sense on a real cluster (the test node has no GPU, account or partition)
CLUSTER_ONLY = ("gpu", "gres", "gpu_model", "slurm_partition", "slurm_account", "constraint", "qos", "cpus_per_gpu")
# JSON keys / table columns that legitimately differ between two runs (wall-clock measurements)
TIMING = re.compile(
    r"(^|_)(time|times|seconds|secs|sec|elapsed|duration|wall|runtime|timestamp|date|started|finished|host|hostname|pid)"
    r"($|_)|_s$",
    re.IGNORECASE,
)


def _unavailable(reason: str) -> None:
    """A missing prerequisite: a failure in CI, a skip elsewhere."""
    if IN_CI:
        pytest.fail(f"SLURM test prerequisite missing in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.environ.get("SANCE_SKIP_SLURM") == "1" and not IN_CI:
        pytest.skip("SANCE_SKIP_SLURM=1")
    if not is_root():
        _unavailable("starting a SLURM test cluster needs root (slurmd runs the jobs)")
    try:
        install_slurm()
    except SlurmSetupError as err:
        _unavailable(str(err))
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except SystemConfBusy as err:
        _unavailable(str(err))
    yield c
    c.stop()


def list_rules() -> list[str]:
    proc = subprocess.run([str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--list-rules",
                           "--configfile", str(REPO / "config.yaml"), str(TINY)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip() and line.split()[0] != "all"]


def local_rules() -> set[str]:
    """The rules the Snakefile's `localrules:` directive keeps out of the scheduler."""
    # one line (localrules: a, b) or, as snakefmt writes it, one indented name per line up to a blank line
    found = re.findall(r"^localrules:(.*(?:\n[ \t]+\S.*)*)", (REPO / "Snakefile").read_text(), flags=re.M)
    return {name.strip() for block in found for name in block.replace("\n", ",").split(",") if name.strip()}


def test_small_rules_are_local_rules():
    """Shard lists, summaries, tables and figures run in the Snakemake process, not as cluster jobs."""
    local = local_rules()
    assert {"shard_ids", "summarize", "ablation_table", "figure_qualitative", "figure_iou_bars",
            "figure_pr_curves", "figure_training_curves"} <= local
    assert local <= set(list_rules()) | {"all"}, local - set(list_rules())
    assert not local & {"extract_cams", "infer_maps", "predict_segmenter", "make_seeds", "train_sance"}


def write_test_profile(out: Path, rules: list[str], cluster: SlurmCluster) -> Path:
    """The real profile, adapted to a one-node test cluster without GPUs or accounting."""
    cfg = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert cfg["executor"] == "slurm"
    cap = max(500, cluster.real_memory // 2)  # two jobs side by side on the test node
    resources = {}
    for rule, values in (cfg.get("set-resources") or {}).items():
        kept = {k: v for k, v in values.items() if k not in CLUSTER_ONLY}
        if "mem_mb" in kept:
            kept["mem_mb"] = f"min({kept['mem_mb']}, {cap})"  # still evaluated with attempt
        resources[rule] = kept
    cfg.update({
        "set-resources": resources,
        # identical threads in both runs: CPU training is bit-reproducible at a fixed thread count
        "set-threads": {rule: 1 for rule in rules},
        "jobs": 4,
        "retries": 0,
        "keep-going": False,
        "latency-wait": 5,
        "max-jobs-per-second": 20,
        "slurm-status-command": "squeue",  # no slurmdbd: sacct cannot answer (MinJobAge 300 >= 3 x 2)
        "slurm-init-seconds-before-status-checks": POLL_SECONDS,
        "seconds-between-status-checks": POLL_SECONDS,
        "slurm-no-account": True,
        "slurm-keep-successful-logs": True,  # the evidence that each job ran under SLURM
    })
    assert cluster.min_job_age >= 3 * cfg["slurm-init-seconds-before-status-checks"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


# The plugin polls job status with a back-off of +10 s per poll that found nothing finished
# (up to 180 s; gentle on a busy slurmctld, no option to change it). On the one-node test
# cluster that is pure idle time (a 40 s job is noticed after 68 s), so the test's Snakemake
# process caps the interval at POLL_SECONDS; submission and status logic are untouched.
POLL_SECONDS = 2
FAST_POLL = f"""
import sys
from snakemake_executor_plugin_slurm import Executor
_prop = Executor.next_seconds_between_status_checks
def _capped(self, value):
    _prop.fset(self, min(value, {POLL_SECONDS}))
Executor.next_seconds_between_status_checks = property(_prop.fget, _capped)
from snakemake.cli import main
sys.argv[0] = "snakemake"
sys.exit(main())
"""


def snakemake_cmd(workdir: Path, *args: str, fast_poll: bool = False) -> list[str]:
    program = [str(BIN / "python"), "-c", FAST_POLL] if fast_poll else [str(BIN / "snakemake")]
    return [*program, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            *args, "--configfile", str(REPO / "config.yaml"), str(TINY)]


def run_bounded(cmd: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    """Snakemake under `timeout -k 30`: a hung run (it ignores repeated SIGTERM) is killed for sure."""
    proc = subprocess.run(["timeout", "-k", "30", str(timeout), *cmd], capture_output=True, text=True, env=env,
                          timeout=timeout + 60)
    if proc.returncode in (124, 137):
        pytest.fail(f"snakemake did not finish within {timeout} s:\n{proc.stderr[-6000:]}")
    return proc


def start_bounded(cmd: list[str], env: dict[str, str], timeout: int) -> subprocess.Popen:
    return subprocess.Popen(["timeout", "-k", "30", str(timeout), *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def elapsed(snakemake_log: str) -> float:
    """Snakemake's own 'Elapsed time: H:MM:SS' (NaN if absent)."""
    m = re.search(r"Elapsed time: (\d+):(\d+):([\d.]+)", snakemake_log)
    return 3600 * int(m.group(1)) + 60 * int(m.group(2)) + float(m.group(3)) if m else float("nan")


def job_counts(dry_run_output: str) -> Counter:
    """Rule -> number of jobs from Snakemake's 'Job stats' table (the `all` target excluded)."""
    counts: Counter = Counter()
    lines = dry_run_output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    for line in lines[start + 3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        if parts[0] != "all":
            counts[parts[0]] = int(parts[1])
    return counts


# -- comparing two result trees --------------------------------------------------------------

def _relative(value, roots: tuple[str, ...]):
    if isinstance(value, str):
        for root in roots:
            value = value.replace(root, "<workdir>")
    return value


# Contour scores come from pyEdgeEval's pixel matcher, whose C++ tie-breaking generator is
# unseeded: two runs on identical contour maps can match a few pixels differently. Files holding
# such scores (and the summaries and tables that repeat them) are compared within this tolerance;
# their figures and markdown tables are not compared pixel by pixel. The maps themselves (HDF5)
# are still compared exactly.
MATCHER_TOLERANCE = 0.02


def _matcher_scored(rel: Path) -> bool:
    return "contour" in rel.name or rel.name.startswith(("summary", "ablation"))


def _close(a, b, tol: float) -> bool:
    numbers = (int, float)
    if tol and isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= tol
    return False


def compare_json(a, b, where: str, roots: tuple[str, ...], tol: float = 0.0) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where}: keys differ {sorted(set(a) ^ set(b))}"]
        out = []
        for k in a:
            if not TIMING.search(str(k)):
                out += compare_json(a[k], b[k], f"{where}.{k}", roots, tol)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: lengths {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in compare_json(x, y, f"{where}[{i}]", roots, tol)]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    if _close(a, b, tol):
        return []
    return [] if _relative(a, roots) == _relative(b, roots) else [f"{where}: {a!r} != {b!r}"]


def _cell(value: str):
    try:
        return float(value)
    except ValueError:
        return value


def compare_table(a: Path, b: Path, roots: tuple[str, ...], tol: float = 0.0) -> list[str]:
    sep = "\t" if a.suffix == ".tsv" else ","
    rows_a = [line.split(sep) for line in a.read_text().splitlines()]
    rows_b = [line.split(sep) for line in b.read_text().splitlines()]
    if len(rows_a) != len(rows_b) or not rows_a or rows_a[0] != rows_b[0]:
        return [f"{a.name}: header or row count differs"]
    keep = [i for i, name in enumerate(rows_a[0]) if not TIMING.search(name)]
    for n, (ra, rb) in enumerate(zip(rows_a[1:], rows_b[1:]), start=2):
        cells_a = [_relative(ra[i], roots) for i in keep if i < len(ra)]
        cells_b = [_relative(rb[i], roots) for i in keep if i < len(rb)]
        if len(cells_a) != len(cells_b) or any(
                x != y and not _close(_cell(x), _cell(y), tol) for x, y in zip(cells_a, cells_b)):
            return [f"{a.name}: line {n} differs: {ra} != {rb}"]
    return []


def compare_h5(a: Path, b: Path) -> list[str]:
    import h5py

    diffs: list[str] = []
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        def attrs(obj) -> dict:
            return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in obj.attrs.items()}

        if attrs(fa) != attrs(fb):
            diffs.append(f"{a.name}: file attributes differ {attrs(fa)} != {attrs(fb)}")
        names_a, names_b = [], []
        fa.visit(names_a.append)
        fb.visit(names_b.append)
        if names_a != names_b:
            return diffs + [f"{a.name}: different groups/datasets {sorted(set(names_a) ^ set(names_b))[:5]}"]
        for name in names_a:
            oa, ob = fa[name], fb[name]
            if attrs(oa) != attrs(ob):
                diffs.append(f"{a.name}:{name}: attributes differ")
            if isinstance(oa, h5py.Dataset):
                x, y = oa[()], ob[()]
                if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y, equal_nan=True):
                    err = float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()) if x.shape == y.shape else None
                    diffs.append(f"{a.name}:{name}: data differ (max |diff| {err})")
    return diffs


def compare_image(a: Path, b: Path) -> list[str]:
    from PIL import Image

    with Image.open(a) as ia, Image.open(b) as ib:
        if ia.mode != ib.mode or ia.size != ib.size or not np.array_equal(np.asarray(ia), np.asarray(ib)):
            return [f"{a.name}: image content differs"]
    return []


def _same_torch(x, y, where: str) -> list[str]:
    import torch

    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.shape != y.shape or x.dtype != y.dtype:
            return [f"{where}: tensor shape/dtype differs"]
        if not torch.equal(x, y):
            return [f"{where}: differs (max |diff| {float((x.double() - y.double()).abs().max())})"]
        return []
    if isinstance(x, dict) and isinstance(y, dict):
        if x.keys() != y.keys():
            return [f"{where}: different keys"]
        return [d for k in x if not TIMING.search(str(k)) for d in _same_torch(x[k], y[k], f"{where}.{k}")]
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        if len(x) != len(y):
            return [f"{where}: lengths differ"]
        return [d for i, (u, v) in enumerate(zip(x, y)) for d in _same_torch(u, v, f"{where}[{i}]")]
    return [] if x == y else [f"{where}: {x!r} != {y!r}"]


def compare_torch(a: Path, b: Path) -> list[str]:
    import torch

    return _same_torch(torch.load(a, map_location="cpu", weights_only=True),
                       torch.load(b, map_location="cpu", weights_only=True), a.name)


def compare_trees(a: Path, b: Path, folders: tuple[str, ...] = ("results", "resources")) -> tuple[int, list[str]]:
    """Every file under ``folders`` of run ``a`` equals the one of run ``b`` (content, not bytes)."""
    roots = (str(a), str(b))
    files_a = sorted(p.relative_to(a) for f in folders for p in (a / f).rglob("*") if p.is_file() or p.is_symlink())
    files_b = sorted(p.relative_to(b) for f in folders for p in (b / f).rglob("*") if p.is_file() or p.is_symlink())
    if files_a != files_b:
        return len(files_a), [f"file lists differ: {sorted(set(map(str, files_a)) ^ set(map(str, files_b)))[:20]}"]
    diffs: list[str] = []
    for rel in files_a:
        fa, fb = a / rel, b / rel
        suffix = fa.suffix.lower()
        tol = MATCHER_TOLERANCE if _matcher_scored(rel) else 0.0
        if tol and suffix in (".png", ".md"):
            continue  # drawn or typeset from the scores compared below within the tolerance
        if suffix in (".h5", ".hdf5"):
            diffs += compare_h5(fa, fb)
        elif suffix in (".png", ".jpg", ".jpeg"):
            diffs += compare_image(fa, fb)
        elif suffix == ".pt":
            diffs += compare_torch(fa, fb)
        elif suffix == ".json":
            diffs += compare_json(json.loads(fa.read_text()), json.loads(fb.read_text()), str(rel), roots, tol)
        elif suffix in (".csv", ".tsv"):
            diffs += compare_table(fa, fb, roots, tol)
        elif suffix == ".html":
            continue  # rendered reports embed dates
        elif _relative(fa.read_bytes().decode(errors="replace"), roots) != _relative(
                fb.read_bytes().decode(errors="replace"), roots):
            diffs.append(f"{rel}: content differs")
    return len(files_a), diffs


# -- tests -----------------------------------------------------------------------------------

def test_system_config_link_never_touches_a_foreign_file(tmp_path):
    """The /etc/slurm/slurm.conf claim (here on a stand-in path): free, foreign, stale, released."""
    system = tmp_path / "etc-slurm" / "slurm.conf"
    cluster = SlurmCluster(tmp_path / "c1", system_conf=system)
    cluster.conf.parent.mkdir(parents=True)
    cluster.conf.write_text(f"{HEADER} (test)\n")
    cluster._claim_system_conf()  # free: linked to this cluster's config
    assert system.is_symlink() and Path(os.readlink(system)) == cluster.conf
    other = SlurmCluster(tmp_path / "c2", system_conf=system)
    # the first cluster's daemons are not running: its link counts as abandoned and is replaced
    other._claim_system_conf()
    assert Path(os.readlink(system)) == other.conf.resolve()
    cluster._release_system_conf()  # not ours any more: left alone
    assert system.is_symlink()
    other._release_system_conf()
    assert not system.exists() and not system.is_symlink()
    system.write_text("ClusterName=production\n")  # somebody's real config
    with pytest.raises(SystemConfBusy, match="a file we did not write"):
        cluster._claim_system_conf()
    assert system.read_text() == "ClusterName=production\n"
    system.unlink()
    system.symlink_to(tmp_path / "gone.conf")  # dangling
    cluster._claim_system_conf()
    assert Path(os.readlink(system)) == cluster.conf



def test_sbatch_job_runs_and_is_recorded(cluster, tmp_path):
    """The cluster itself: a batch job runs on the node with a job id and lands in SLURM's records."""
    out = tmp_path / "job.out"
    proc = subprocess.run(["sbatch", "--parsable", "-o", str(out), "--wrap", "echo job=$SLURM_JOB_ID"],
                          capture_output=True, text=True, timeout=30, env=cluster.env())
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(j.job_id == job_id for j in cluster.completed_jobs()):
        time.sleep(0.2)
    record = {j.job_id: j for j in cluster.completed_jobs()}[job_id]
    assert record.state == "COMPLETED" and record.exit_code == "0:0"
    assert out.read_text().strip() == f"job={job_id}"


def test_tiny_pipeline_through_slurm_equals_local_run(cluster, tmp_path):
    rules = list_rules()
    profile = write_test_profile(tmp_path / "profile", rules, cluster)
    env = cluster.env()
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"  # the jobs' `script:` python is the venv's

    slurm_wd, local_wd = tmp_path / "slurm", tmp_path / "local"
    dry = run_bounded(snakemake_cmd(slurm_wd, "--profile", str(profile), "--dry-run", "all"), env, 300)
    assert dry.returncode == 0, dry.stderr[-4000:]
    expected = job_counts(dry.stdout + dry.stderr)
    assert sum(expected.values()) > 0

    # the same workflow locally, with the same threads per rule, side by side with the SLURM run
    # (which mostly waits on job start-up and polling)
    local_env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    threads = [f"{rule}=1" for rule in rules]
    local = start_bounded(snakemake_cmd(local_wd, "all", "--cores", "2", "--set-threads", *threads), local_env, TIMEOUT)
    start = time.monotonic()
    finished = False
    try:
        proc = run_bounded(snakemake_cmd(slurm_wd, "--profile", str(profile), "all", fast_poll=True), env, TIMEOUT)
        finished = True
    finally:
        slurm_seconds = time.monotonic() - start
        if not finished or proc.returncode != 0:
            local.terminate()  # `timeout` passes it on to the local Snakemake
        local_out, local_err = local.communicate(timeout=TIMEOUT + 60)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"SLURM run failed:\n{log[-8000:]}{cluster._log_tail('slurmctld')}"
    assert local.returncode not in (124, 137), f"local run did not finish within {TIMEOUT} s:\n{local_err[-4000:]}"
    assert local.returncode == 0, f"local run failed:\n{local_err[-6000:]}"

    # 1. every job of a non-local rule was submitted with sbatch and got its own SLURM job id; the
    #    local rules' jobs (shard lists, summaries, tables, figures) ran in the Snakemake process
    local = local_rules()
    remote = Counter({rule: n for rule, n in expected.items() if rule not in local})
    n_local = sum(expected.values()) - sum(remote.values())
    assert n_local > 0, f"no job of the local rules {sorted(local)} in {dict(expected)}"
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    assert len(submitted) == len(set(submitted)) == sum(remote.values()), (
        f"{len(submitted)} sbatch submissions for {sum(remote.values())} cluster jobs {dict(remote)}")
    print(f"\nsbatch submissions: {sum(expected.values())} without local rules, {len(submitted)} with "
          f"({n_local} jobs ran locally)")
    # 2. SLURM ran each of them: one SLURM log per job under the rule's folder
    slurm_logs = list((slurm_wd / "logs" / "slurm").rglob("*.log"))
    per_rule = Counter(p.relative_to(slurm_wd / "logs" / "slurm").parts[0].removeprefix("rule_") for p in slurm_logs)
    assert per_rule == remote
    assert {p.stem for p in slurm_logs} == set(submitted)
    # 3. SLURM's own records: every job completed with exit code 0 in the run's folder
    records = {j.job_id: j for j in cluster.completed_jobs()}
    for job_id in submitted:
        assert job_id in records, f"SLURM has no completion record of job {job_id}"
        job = records[job_id]
        assert (job.state, job.exit_code) == ("COMPLETED", "0:0"), job.fields
        assert Path(job.fields["WorkDir"]).resolve() == slurm_wd.resolve()

    n_files, diffs = compare_trees(slurm_wd, local_wd)
    assert n_files > 0
    assert not diffs, "SLURM and local outputs differ:\n" + "\n".join(diffs[:30])
    print(f"\n{len(submitted)} SLURM jobs ({dict(remote)}) in {slurm_seconds:.0f} s; "
          f"local run (alongside) {elapsed(local_err):.0f} s; {n_files} output files equal")

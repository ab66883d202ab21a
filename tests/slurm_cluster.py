"""A throw-away single-node SLURM cluster on 127.0.0.1, for tests (root only).

Everything lives under one temporary folder: the munge key and socket, ``slurm.conf``, state,
spool, pid and log files. The daemons and our own client calls get the config through
``-f``/``SLURM_CONF`` (see :meth:`SlurmCluster.env`). Job steps cannot: Snakemake's jobstep
executor strips every ``SLURM_*`` variable before its ``srun``, which then looks for
``/etc/slurm/slurm.conf``. So the cluster also claims that path with a symbolic link to its
own config, created atomically only when the path is free (an existing file is never touched,
a link to another live test cluster means "busy"; only a link left by a test run whose
daemons are gone is replaced) and removed at stop only if it still points to this cluster's config. The ports
are chosen free at start. :meth:`SlurmCluster.stop` cancels the cluster's jobs and then stops
exactly the three daemons it started (its own children, checked against the pid files and
their command lines), never anything found by name.

    with SlurmCluster(tmp_path / "slurm") as cluster:
        subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env(), check=True)

Used by tests/test_slurm.py; usable from a shell too: ``python tests/slurm_cluster.py DIR``
starts a cluster and prints the ``export SLURM_CONF=...`` line, ``--stop DIR`` stops it.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "scancel", "srun")
PACKAGES = ("slurm-wlm", "munge")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")  # where srun inside a job step looks


class SlurmSetupError(RuntimeError):
    """SLURM could not be installed, configured or started; the message says which step."""


class SystemConfBusy(SlurmSetupError):
    """/etc/slurm/slurm.conf belongs to someone else (a real installation or another test cluster)."""


def which(name: str) -> str | None:
    """``shutil.which`` that also looks in the sbin folders (absent from a user's PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in SBIN:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missing_programs() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if which(name) is None]


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def install_slurm(timeout: int = 600) -> None:
    """Install Debian/Ubuntu's ``slurm-wlm`` and ``munge`` with apt-get when a program is missing."""
    missing = missing_programs()
    if not missing:
        return
    if not is_root():
        raise SlurmSetupError(f"SLURM programs missing ({', '.join(missing)}) and not root, cannot apt-get install")
    apt = which("apt-get")
    if apt is None:
        raise SlurmSetupError(f"SLURM programs missing ({', '.join(missing)}) and no apt-get to install {PACKAGES}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [apt, "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    proc = subprocess.run(install, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:  # package lists missing or stale (fresh container): update once, retry
        subprocess.run([apt, "update", "-q"], capture_output=True, text=True, timeout=timeout, env=env)
        proc = subprocess.run(install, capture_output=True, text=True, timeout=timeout, env=env)
    still = missing_programs()
    if proc.returncode != 0 or still:
        raise SlurmSetupError(
            f"apt-get install {' '.join(PACKAGES)} failed (rc {proc.returncode}, still missing: {still}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    log.info("installed %s", " ".join(PACKAGES))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_hardware() -> dict[str, int]:
    """CPUs and memory as ``slurmd -C`` reports them; memory set to 90 % so the node never drains."""
    out = subprocess.run([which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
    values = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0] if out else ""))
    try:
        return {
            "CPUs": int(values["CPUs"]),
            "Boards": int(values.get("Boards", 1)),
            "SocketsPerBoard": int(values["SocketsPerBoard"]),
            "CoresPerSocket": int(values["CoresPerSocket"]),
            "ThreadsPerCore": int(values["ThreadsPerCore"]),
            "RealMemory": int(int(values["RealMemory"]) * 0.9),
        }
    except (KeyError, ValueError) as err:
        raise SlurmSetupError(f"cannot read the node hardware from 'slurmd -C': {out!r}") from err


HEADER = "# Written by tests/slurm_cluster.py"


def _abandoned_test_config(link: Path) -> bool:
    """The link points to a config this helper wrote, and none of that cluster's daemons is alive."""
    target = Path(os.readlink(link))
    try:
        if not target.read_text().startswith(HEADER):
            return False
    except OSError:
        return False
    root = target.parent.parent
    for pid_file in (root / "run").glob("*.pid"):
        try:
            pid = int(pid_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if str(root).encode() in cmdline:
            return False
    return True


@dataclass
class Job:
    """One line of SLURM's job completion log (jobcomp/filetxt)."""

    job_id: str
    name: str
    state: str
    exit_code: str
    fields: dict[str, str]


class SlurmCluster:
    """Start/stop munged, slurmctld and slurmd for one node on 127.0.0.1 under ``root``."""

    def __init__(self, root: str | Path, cluster_name: str = "sancetest", min_job_age: int = 300,
                 system_conf: str | Path | None = SYSTEM_CONF) -> None:
        self.root = Path(root).resolve()
        self.system_conf = Path(system_conf) if system_conf else None
        self._claimed = False
        self.cluster_name = cluster_name
        self.min_job_age = min_job_age
        self.node = socket.gethostname().split(".")[0] or "localhost"
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"
        self.jobcomp = self.root / "log" / "jobcomp.txt"
        self.pid_files = {
            "munged": self.root / "run" / "munged.pid",
            "slurmctld": self.root / "run" / "slurmctld.pid",
            "slurmd": self.root / "run" / "slurmd.pid",
        }
        self.logs = {
            "munged": self.root / "log" / "munged.log",
            "slurmctld": self.root / "log" / "slurmctld.log",
            "slurmd": self.root / "log" / "slurmd.log",
        }
        self._started: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self.real_memory = 0
        self.cpus = 0

    # -- configuration ---------------------------------------------------------------------
    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for client commands (sbatch, squeue, snakemake) talking to this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        sbin = ":".join(d for d in ("/usr/sbin", "/sbin") if d not in env.get("PATH", "").split(":"))
        if sbin:
            env["PATH"] = f"{env.get('PATH', '')}:{sbin}"
        for key in [k for k in env if k.startswith(("SLURM_JOB", "SLURM_STEP", "SBATCH_", "SRUN_"))]:
            del env[key]  # never inherit another allocation's settings
        return env

    def _write_config(self) -> None:
        for sub in ("etc", "munge", "run", "log", "state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(secrets.token_bytes(1024))
        os.chmod(key, 0o400)
        hw = node_hardware()
        self.real_memory = hw["RealMemory"]
        self.cpus = hw["CPUs"]
        ctld_port, slurmd_port = free_port(), free_port()
        while slurmd_port == ctld_port:
            slurmd_port = free_port()
        r = self.root
        lines = [
            f"{HEADER} for a throw-away single-node test cluster on 127.0.0.1.",
            f"ClusterName={self.cluster_name}",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "CredType=cred/munge",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={self.pid_files['slurmctld']}",
            f"SlurmdPidFile={self.pid_files['slurmd']}",
            f"SlurmctldLogFile={self.logs['slurmctld']}",
            f"SlurmdLogFile={self.logs['slurmd']}",
            f"PlugStackConfig={r / 'etc' / 'plugstack.conf'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "ReturnToService=2",
            f"MinJobAge={self.min_job_age}",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.jobcomp}",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "InactiveLimit=0",
            "KillWait=5",
            "Waittime=0",
            (
                f"NodeName={self.node} NodeAddr=127.0.0.1 NodeHostname={self.node} CPUs={hw['CPUs']} "
                f"Boards={hw['Boards']} SocketsPerBoard={hw['SocketsPerBoard']} CoresPerSocket={hw['CoresPerSocket']} "
                f"ThreadsPerCore={hw['ThreadsPerCore']} RealMemory={hw['RealMemory']} State=UNKNOWN"
            ),
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        (r / "etc" / "plugstack.conf").write_text("")

    def _claim_system_conf(self) -> None:
        """Point /etc/slurm/slurm.conf at our config, only if nobody else's config is there."""
        if self.system_conf is None:
            return
        path = self.system_conf
        if path.is_symlink() and (not path.exists() or _abandoned_test_config(path)):
            log.warning("replacing link %s -> %s left by a test run that is gone", path, os.readlink(path))
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(self.conf, path)  # atomic: fails if the path exists
        except FileExistsError:
            what = f"a link to {os.readlink(path)} (another test cluster)" if path.is_symlink() else "a file we did not write"
            raise SystemConfBusy(f"{path} exists and is {what}; not touching it. Job steps (srun inside a job) "
                                  "need that path, so this test cluster cannot run Snakemake jobs here.") from None
        self._claimed = True

    def _release_system_conf(self) -> None:
        if self._claimed and self.system_conf is not None:
            path = self.system_conf
            if path.is_symlink() and os.readlink(path) == str(self.conf):
                path.unlink()
            self._claimed = False

    # -- start / stop ------------------------------------------------------------------------
    def _run_daemon(self, name: str, args: list[str]) -> None:
        """Run a daemon in the foreground as our child (so we can wait for it), in its own session."""
        program = which(name)
        if program is None:
            raise SlurmSetupError(f"{name} not found (install slurm-wlm and munge)")
        out = open(self.root / "log" / f"{name}.stdout", "ab")
        try:
            proc = subprocess.Popen([program, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=self.env(), start_new_session=True)
        finally:
            out.close()
        self._procs[name] = proc
        try:
            pid = self._wait_pid(name)
        except SlurmSetupError:
            if proc.poll() is not None:
                raise SlurmSetupError(f"{name} exited at start (rc {proc.returncode}){self._log_tail(name)}"
                                      f"{self._log_tail(name, path=self.root / 'log' / f'{name}.stdout')}") from None
            raise
        if pid != proc.pid:
            raise SlurmSetupError(f"{name}: pid file says {pid}, started process is {proc.pid}")
        self._started[name] = pid
        log.info("started %s (pid %d)", name, pid)

    def _wait_pid(self, name: str, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        path = self.pid_files[name]
        while time.monotonic() < deadline:
            try:
                pid = int(path.read_text().split()[0])
                if self._is_ours(name, pid):
                    return pid
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.1)
        raise SlurmSetupError(f"{name} wrote no pid file {path} within {timeout:.0f} s{self._log_tail(name)}")

    def _is_ours(self, name: str, pid: int) -> bool:
        """The pid is alive, runs ``name`` and was started with one of this cluster's paths."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        args = [a.decode(errors="replace") for a in cmdline if a]
        return bool(args) and Path(args[0]).name == name and any(str(self.root) in a for a in args[1:])

    def _log_tail(self, name: str, n: int = 15, path: Path | None = None) -> str:
        path = path or self.logs.get(name)
        if path is None or not path.is_file():
            return ""
        lines = path.read_text(errors="replace").splitlines()[-n:]
        return f"\n--- last lines of {path} ---\n" + "\n".join(lines)

    def start(self, timeout: float = 60) -> SlurmCluster:
        if not is_root():
            raise SlurmSetupError("a test SLURM cluster needs root (slurmd runs jobs as any user)")
        missing = missing_programs()
        if missing:
            raise SlurmSetupError(f"SLURM programs missing: {', '.join(missing)} (call install_slurm first)")
        self._write_config()
        try:
            self._claim_system_conf()
            self._run_daemon("munged", [
                f"--socket={self.munge_socket}", f"--key-file={self.root / 'munge' / 'munge.key'}",
                f"--pid-file={self.pid_files['munged']}", f"--log-file={self.logs['munged']}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}", "--force", "--foreground",
            ])
            self._run_daemon("slurmctld", ["-D", "-f", str(self.conf)])
            self._run_daemon("slurmd", ["-D", "-f", str(self.conf), "-N", self.node])
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            proc = subprocess.run([which("sinfo") or "sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                                  timeout=30, env=self.env())
            state = proc.stdout.strip() or proc.stderr.strip()
            if state.split("\n")[0].rstrip("*") in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.3)
        raise SlurmSetupError(f"node {self.node} not idle within {timeout:.0f} s (state {state!r})"
                              f"{self._log_tail('slurmctld')}{self._log_tail('slurmd')}")

    def running_jobs(self) -> list[str]:
        proc = subprocess.run([which("squeue") or "squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                              timeout=30, env=self.env())
        return proc.stdout.split() if proc.returncode == 0 else []

    def stop(self, timeout: float = 30) -> None:
        """Cancel this cluster's jobs, then stop the daemons this object started, in reverse order."""
        if "slurmctld" in self._started and self._alive(self._started["slurmctld"]):
            jobs = self.running_jobs()
            if jobs:
                log.info("cancelling jobs %s", jobs)
                subprocess.run([which("scancel") or "scancel", *jobs], capture_output=True, timeout=30, env=self.env())
                deadline = time.monotonic() + timeout
                while self.running_jobs() and time.monotonic() < deadline:
                    time.sleep(0.5)
        for name in reversed(DAEMONS):
            pid = self._started.pop(name, None)
            proc = self._procs.pop(name, None)
            if pid is None and proc is not None and proc.poll() is None:
                pid = proc.pid  # started but its pid file never appeared
            if pid is None:
                continue
            if not self._is_ours(name, pid):
                log.warning("%s (pid %d) already gone", name, pid)
            else:
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while self._alive(pid) and time.monotonic() < deadline:
                    if proc is not None and proc.poll() is not None:
                        break
                    time.sleep(0.1)
                if self._alive(pid) and self._is_ours(name, pid):
                    log.warning("%s (pid %d) ignored SIGTERM, killing it", name, pid)
                    os.kill(pid, signal.SIGKILL)
                log.info("stopped %s (pid %d)", name, pid)
            if proc is not None:
                try:
                    proc.wait(timeout=timeout)  # reap our child
                except subprocess.TimeoutExpired:
                    log.warning("%s (pid %d) did not exit", name, proc.pid)
        self._release_system_conf()

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state != "Z"

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- records -----------------------------------------------------------------------------
    def completed_jobs(self) -> list[Job]:
        """SLURM's own record of every finished job (jobcomp/filetxt), in completion order."""
        if not self.jobcomp.is_file():
            return []
        jobs = []
        for line in self.jobcomp.read_text().splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobId" in fields:
                jobs.append(Job(fields["JobId"], fields.get("Name", ""), fields.get("JobState", ""),
                                fields.get("ExitCode", ""), fields))
        return jobs


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="folder for the cluster's files")
    parser.add_argument("--stop", action="store_true", help="stop the cluster started in ROOT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cluster = SlurmCluster(args.root)
    if args.stop:
        for name in DAEMONS:
            try:
                cluster._started[name] = int(cluster.pid_files[name].read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        cluster._claimed = True  # released only if the link points to this cluster's config
        cluster.stop()
        return 0
    try:
        install_slurm()
        cluster.start()
    except SlurmSetupError as err:
        log.error("%s", err)
        return 1
    print(f"export SLURM_CONF={cluster.conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

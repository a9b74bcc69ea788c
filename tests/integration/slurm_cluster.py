"""A throwaway single-node SLURM cluster for integration tests (and for trying the profile).

Starts munged, MariaDB, slurmdbd, slurmctld and slurmd as root *without systemd*, each
with its own config, socket, port, pid file and log under one state directory, so it
never touches a system SLURM, MySQL or munge that may already run on the machine.
The node declares a GPU generic resource without device files (``Gres=gpu:N``,
``gres.conf`` with ``AutoDetect=off`` and a bare ``Count``), so ``--gpus N`` requests
are scheduled and accounted although the machine has no GPU.

Debian packages are installed only when a daemon is missing (``apt-get update`` once,
then ``apt-get install -y``). Starting is idempotent: a daemon whose pid file points at
a live process is left alone. ``stop()`` cancels the cluster's jobs and ends exactly the
daemons named by the pid files, nothing else.

Command line (run as root)::

    python tests/integration/slurm_cluster.py start     # prints `export SLURM_CONF=...`
    python tests/integration/slurm_cluster.py status
    python tests/integration/slurm_cluster.py stop
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("slurm_cluster")

PACKAGES = ["munge", "mariadb-server", "slurmdbd", "slurmctld", "slurmd", "slurm-client"]
# One binary per package: a missing one means the package must be installed.
BINARIES = {
    "munge": "munged",
    "mariadb-server": "mariadbd",
    "slurmdbd": "slurmdbd",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "slurm-client": "sbatch",
}
CONF_HEADER = "# Written by tests/integration/slurm_cluster.py: a single-node test cluster."
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
DEFAULT_ROOT = Path(os.environ.get("FUNDUSFM_SLURM_DIR", "/tmp/fundusfm-slurm"))


class ClusterError(RuntimeError):
    """The test cluster could not be started; the message names the daemon and its log."""


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/bin", "/sbin") if (p := Path(d) / name).exists()), None
    )


def missing_packages() -> list[str]:
    """Debian packages whose daemon or client binary is not installed."""
    return [pkg for pkg in PACKAGES if _which(BINARIES[pkg]) is None]


def install_packages(packages: list[str]) -> None:
    """``apt-get update`` then ``apt-get install -y`` the given packages (root only)."""
    if not packages:
        return
    if os.geteuid() != 0:
        raise ClusterError(f"packages {packages} are missing and installing them needs root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log.info("installing %s", " ".join(packages))
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")


# Process names (/proc/PID/comm) that a pid file of ours may name: a pid reused by an
# unrelated process after a crash is then neither trusted nor killed.
_COMM = {"munged": ("munged",), "mysqld": ("mariadbd", "mysqld"), "slurmdbd": ("slurmdbd",),
         "slurmctld": ("slurmctld",), "slurmd": ("slurmd",)}


def _pid_alive(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` if that process is alive, not a zombie and the expected daemon."""
    try:
        pid = int(pidfile.read_text().split()[0])
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    if state in ("Z", "X") or comm not in _COMM.get(pidfile.stem, (comm,)):
        return None
    return pid


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _wait(what: str, check, timeout: float, logfile: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    tail = ""
    if logfile is not None and logfile.exists():
        tail = "\n" + "\n".join(logfile.read_text(errors="replace").splitlines()[-30:])
    raise ClusterError(f"{what} not ready after {timeout:.0f} s (log: {logfile}){tail}")


@dataclass
class SlurmCluster:
    """A single-node SLURM cluster with accounting, living under ``root``.

    ``partition`` and ``account`` are created so the workflow profile's
    ``slurm_partition`` / ``slurm_account`` can point at them; ``gpus`` is the
    ``Gres=gpu:N`` count the node declares; ``real_memory_mb`` is the memory the node
    declares (not enforced: no cgroups here), generous so a profile's per-rule memory
    requests are schedulable.
    """

    root: Path = DEFAULT_ROOT
    cluster_name: str = "fundusfm"
    partition: str = "debug"
    account: str = "fundusfm"
    gpus: int = 1
    features: str = "fakegpu"
    cpus: int = os.cpu_count() or 1
    real_memory_mb: int = 256_000
    ctld_port: int = 16817
    slurmd_port: int = 16818
    dbd_port: int = 16819
    mysql_port: int = 16306
    kill_wait_s: int = 30  # SIGTERM -> SIGKILL grace on scancel/timeout: time to checkpoint

    def __post_init__(self):
        self.root = Path(self.root).resolve()
        self.node = socket.gethostname().split(".")[0]
        r = self.root
        self.etc, self.run, self.logs, self.spool = r / "etc", r / "run", r / "log", r / "spool"
        self.munge_dir, self.mysql_dir = r / "munge", r / "mysql"
        self.conf = self.etc / "slurm.conf"
        self.munge_socket = self.munge_dir / "munge.socket"

    # ------------------------------------------------------------------ public
    @property
    def env(self) -> dict[str, str]:
        """The current environment plus SLURM_CONF pointing at this cluster."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self, install: bool = True, timeout: float = 60) -> "SlurmCluster":
        """Install missing packages, write configs, start missing daemons, wait for an idle node."""
        if os.geteuid() != 0:
            raise ClusterError("the test cluster runs its daemons as root; run as root")
        missing = missing_packages()
        if missing:
            if not install:
                raise ClusterError(f"missing packages: {missing}")
            install_packages(missing)
        t0 = time.monotonic()
        for d in (self.etc, self.run, self.logs, self.spool / "ctld", self.spool / "d"):
            d.mkdir(parents=True, exist_ok=True)
        if self._write_configs():
            # daemons still running on an older config of ours: restart them on the new one
            for name in ("slurmd", "slurmctld", "slurmdbd"):
                self._stop_daemon(name)
        self._link_system_conf()
        self._start_munge(timeout)
        self._start_mysql(timeout)
        self._start_slurmdbd(timeout)
        self._ensure_accounting_cluster()
        self._start_slurmctld(timeout)
        self._start_slurmd(timeout)
        self._ensure_account()
        _wait("node idle in sinfo", self._node_ready, timeout, self.logs / "slurmd.log")
        log.info("SLURM test cluster up in %.1f s (SLURM_CONF=%s)", time.monotonic() - t0, self.conf)
        return self

    def stop(self, timeout: float = 15) -> None:
        """Cancel the cluster's jobs, then end every daemon named by a pid file here."""
        if _pid_alive(self.run / "slurmctld.pid"):
            ids = self.cmd(["squeue", "-h", "-o", "%i"], check=False).stdout.split()
            if ids:
                self.cmd(["scancel", "--full", *ids], check=False)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and self.cmd(["squeue", "-h", "-o", "%i"], check=False).stdout.split():
                    time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "slurmdbd", "mysqld", "munged"):
            self._stop_daemon(name, timeout)
        self._unlink_system_conf()

    def _pidfile(self, name: str) -> Path:
        return {"munged": self.munge_dir, "mysqld": self.mysql_dir}.get(name, self.run) / f"{name}.pid"

    def _stop_daemon(self, name: str, timeout: float = 15) -> None:
        pidfile = self._pidfile(name)
        pid = _pid_alive(pidfile)
        if pid is not None:
            log.info("stopping %s (pid %d)", name, pid)
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _pid_alive(pidfile) == pid:
                time.sleep(0.2)
            if _pid_alive(pidfile) == pid:
                os.kill(pid, signal.SIGKILL)
        # a stale pid file would make the next start think the daemon still runs
        pidfile.unlink(missing_ok=True)

    def _link_system_conf(self) -> None:
        """Point /etc/slurm/slurm.conf at this cluster's config.

        SLURM_CONF alone is not enough: snakemake-executor-plugin-slurm-jobstep drops every
        SLURM_* variable (SLURM_CONF included) before its nested ``srun``, which then looks
        at the default path. A config there that is not ours is never replaced.
        """
        link = SYSTEM_CONF
        if link.is_symlink() or link.exists():
            if link.is_symlink() and Path(os.readlink(link)) == self.conf:
                return
            # replace only a link to another (or a vanished) test cluster's config
            ours = link.is_symlink() and (not link.exists() or link.read_text().startswith(CONF_HEADER))
            if not ours:
                raise ClusterError(f"{link} exists and is not a test cluster's config; refusing to replace it")
            link.unlink()
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(self.conf)

    def _unlink_system_conf(self) -> None:
        if SYSTEM_CONF.is_symlink() and Path(os.readlink(SYSTEM_CONF)) == self.conf:
            SYSTEM_CONF.unlink()

    def running(self) -> dict[str, int | None]:
        """Pid of each daemon (None when not running)."""
        return {
            name: _pid_alive(self._pidfile(name)) for name in ("munged", "mysqld", "slurmdbd", "slurmctld", "slurmd")
        }

    def cmd(self, args: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        p = subprocess.run(args, capture_output=True, text=True, env=self.env, **kw)
        if check and p.returncode != 0:
            raise ClusterError(f"{' '.join(args)} failed ({p.returncode}): {p.stdout}{p.stderr}")
        return p

    def sacct(self, job_ids: list[str] | None = None, name: str | None = None) -> list[dict[str, str]]:
        """Allocation records (``sacct -X``) of the given jobs, or all jobs of a name."""
        fields = ["JobIDRaw", "JobName", "State", "ExitCode", "Partition", "Account", "AllocTRES", "Comment", "Constraints"]
        args = ["sacct", "-X", "-n", "-P", "--starttime", "2000-01-01", f"--format={','.join(fields)}"]
        if job_ids:
            args += ["-j", ",".join(job_ids)]
        if name:
            args += ["--name", name]
        rows = [line.split("|") for line in self.cmd(args).stdout.splitlines() if line.strip()]
        return [dict(zip(fields, r)) for r in rows]

    # ---------------------------------------------------------------- configs
    def _write_configs(self) -> bool:
        """Write slurm.conf, gres.conf, slurmdbd.conf; True when any of them changed."""
        socket_opt = f"AuthInfo=socket={self.munge_socket}"
        slurm_conf = f"""\
{CONF_HEADER}
ClusterName={self.cluster_name}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
AuthType=auth/munge
{socket_opt}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={self.spool}/ctld
SlurmdSpoolDir={self.spool}/d
SlurmctldPidFile={self.run}/slurmctld.pid
SlurmdPidFile={self.run}/slurmd.pid
SlurmctldLogFile={self.logs}/slurmctld.log
SlurmdLogFile={self.logs}/slurmd.log
# No cgroups/systemd in a sandbox: track processes by parent pid, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.dbd_port}
# For slurmdbd connections this names the munge socket (AuthInfo covers the rest).
AccountingStoragePass={self.munge_socket}
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
# keep sbatch --comment (the Snakemake rule of each job) in accounting
AccountingStoreFlags=job_comment
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# The node declares what the profile may ask for, not what the hardware has.
SlurmdParameters=config_overrides
GresTypes=gpu
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
KillWait={self.kill_wait_s}
MinJobAge=300
DefMemPerCPU=1000
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.real_memory_mb} Features={self.features}{f' Gres=gpu:{self.gpus}' if self.gpus else ''} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        # SLURM 22.05 drops a GPU gres without File= ("Removing file-less GPU"), so each
        # GPU gets a placeholder file; with TaskPlugin=task/none nothing opens it.
        dev = self.root / "dev"
        dev.mkdir(exist_ok=True)
        for i in range(self.gpus):
            (dev / f"fakegpu{i}").touch()
        files = f"{dev}/fakegpu[0-{self.gpus - 1}]" if self.gpus > 1 else f"{dev}/fakegpu0"
        gres_conf = f"AutoDetect=off\nNodeName={self.node} Name=gpu File={files}\n" if self.gpus else ""
        dbd_conf = f"""\
AuthType=auth/munge
{socket_opt}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.dbd_port}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.mysql_port}
StorageUser=slurm
StoragePass=fundusfm-test
StorageLoc=slurm_acct_db
LogFile={self.logs}/slurmdbd.log
PidFile={self.run}/slurmdbd.pid
"""
        changed = False
        for name, text in (("slurm.conf", slurm_conf), ("gres.conf", gres_conf), ("slurmdbd.conf", dbd_conf)):
            path = self.etc / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                changed = True
        (self.etc / "slurmdbd.conf").chmod(0o600)  # slurmdbd refuses a readable config (it holds a password)
        return changed

    # ---------------------------------------------------------------- daemons
    def _start_munge(self, timeout: float) -> None:
        pidfile = self.munge_dir / "munged.pid"
        if _pid_alive(pidfile):
            return
        munge = pwd.getpwnam("munge")
        self.munge_dir.mkdir(parents=True, exist_ok=True)
        key = self.munge_dir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        for p in (self.munge_dir, key):
            os.chown(p, munge.pw_uid, munge.pw_gid)
        # clients reach the socket through this directory: munged insists on o+x
        self.munge_dir.chmod(0o711)
        key.chmod(0o400)
        p = subprocess.run(
            [
                "runuser", "-u", "munge", "--", _which("munged"),
                f"--socket={self.munge_socket}", f"--key-file={key}", f"--pid-file={pidfile}",
                f"--log-file={self.munge_dir / 'munged.log'}", f"--seed-file={self.munge_dir / 'munged.seed'}",
            ],
            capture_output=True, text=True,
        )  # fmt: skip
        if p.returncode != 0:
            raise ClusterError(f"munged failed to start: {p.stderr.strip()}")
        _wait("munged", lambda: self.munge_socket.exists() and _pid_alive(pidfile), timeout, self.munge_dir / "munged.log")

    def _start_mysql(self, timeout: float) -> None:
        pidfile = self.mysql_dir / "mysqld.pid"
        if _pid_alive(pidfile):
            return
        mysql = pwd.getpwnam("mysql")
        data = self.mysql_dir / "data"
        self.mysql_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.mysql_dir, mysql.pw_uid, mysql.pw_gid)
        fresh = not (data / "mysql").exists()
        if fresh:
            p = subprocess.run(
                [_which("mariadb-install-db") or _which("mysql_install_db"), "--user=mysql", f"--datadir={data}",
                 "--skip-test-db", "--auth-root-authentication-method=socket"],
                capture_output=True, text=True,
            )  # fmt: skip
            if p.returncode != 0:
                raise ClusterError(f"mariadb-install-db failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        sock = self.mysql_dir / "mysqld.sock"
        logfile = self.mysql_dir / "mysqld.log"
        # mariadbd stays in the foreground: detach it into its own session.
        subprocess.Popen(
            [
                _which("mariadbd"), "--no-defaults", "--user=mysql", f"--datadir={data}",
                f"--socket={sock}", f"--port={self.mysql_port}", "--bind-address=127.0.0.1",
                f"--pid-file={pidfile}", f"--log-error={logfile}", "--innodb-buffer-pool-size=32M",
                "--skip-name-resolve",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        _wait("mariadb", lambda: sock.exists() and _port_open(self.mysql_port), timeout, logfile)
        sql = (
            "CREATE DATABASE IF NOT EXISTS slurm_acct_db; "
            "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'fundusfm-test'; "
            "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'fundusfm-test'; "
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; "
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
        )
        client = _which("mariadb") or _which("mysql")
        p = subprocess.run([client, f"--socket={sock}", "-uroot", "-e", sql], capture_output=True, text=True)
        if p.returncode != 0:
            raise ClusterError(f"creating the accounting database failed: {p.stderr}")

    def _daemon(self, name: str, args: list[str], timeout: float, ready) -> None:
        pidfile = self.run / f"{name}.pid"
        if _pid_alive(pidfile):
            return
        p = subprocess.run([_which(name), *args], capture_output=True, text=True, env=self.env)
        if p.returncode != 0:
            raise ClusterError(f"{name} failed to start ({p.returncode}): {p.stderr}\nsee {self.logs / (name + '.log')}")
        _wait(name, lambda: _pid_alive(pidfile) and ready(), timeout, self.logs / f"{name}.log")

    def _start_slurmdbd(self, timeout: float) -> None:
        self._daemon("slurmdbd", [], timeout, lambda: _port_open(self.dbd_port))

    def _start_slurmctld(self, timeout: float) -> None:
        self._daemon("slurmctld", ["-f", str(self.conf)], timeout, lambda: _port_open(self.ctld_port))

    def _start_slurmd(self, timeout: float) -> None:
        self._daemon("slurmd", ["-f", str(self.conf), "-N", self.node], timeout, lambda: _port_open(self.slurmd_port))

    def _ensure_accounting_cluster(self) -> None:
        # slurmdbd accepts connections a moment before it answers sacctmgr
        deadline = time.monotonic() + 30
        while True:
            p = self.cmd(["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"], check=False)
            if p.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if self.cluster_name not in p.stdout.split():
            self.cmd(["sacctmgr", "-i", "add", "cluster", self.cluster_name])

    def _ensure_account(self) -> None:
        accounts = self.cmd(["sacctmgr", "-n", "-P", "show", "account", "format=account"]).stdout.split()
        if self.account not in accounts:
            self.cmd(["sacctmgr", "-i", "add", "account", self.account, f"cluster={self.cluster_name}"])
        user = pwd.getpwuid(os.geteuid()).pw_name
        assoc = self.cmd(["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=account"]).stdout.split()
        if self.account not in assoc:
            self.cmd(["sacctmgr", "-i", "add", "user", user, f"account={self.account}", f"cluster={self.cluster_name}"])

    def _node_ready(self) -> bool:
        p = self.cmd(["sinfo", "-h", "-N", "-o", "%N %t"], check=False)
        states = dict(line.split() for line in p.stdout.splitlines() if line.strip())
        state = states.get(self.node, "")
        if state.startswith(("drain", "down", "inval")) and _pid_alive(self.run / "slurmd.pid"):
            # a node left down by an earlier, killed run: ReturnToService only heals fresh registrations
            self.cmd(["scontrol", "update", f"nodename={self.node}", "state=resume"], check=False)
        return state in ("idle", "mix", "alloc")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["start", "stop", "status"])
    ap.add_argument("--dir", type=Path, default=DEFAULT_ROOT, help="state directory (default %(default)s)")
    ap.add_argument("--gpus", type=int, default=1, help="GPUs the node declares (Gres=gpu:N)")
    ap.add_argument("--partition", default="debug")
    ap.add_argument("--account", default="fundusfm")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cluster = SlurmCluster(root=args.dir, gpus=args.gpus, partition=args.partition, account=args.account)
    if args.action == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    elif args.action == "stop":
        cluster.stop()
    else:
        for name, pid in cluster.running().items():
            print(f"{name:10s} {pid or 'not running'}")
        if cluster.running()["slurmctld"]:
            print(cluster.cmd(["sinfo", "-N", "-o", "%N %P %t %c %m %G"], check=False).stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Chaos run: a tiny study interrupted at random (kill -9 and SIGTERM, of the whole run or
of one job), rerun after each interruption, must end byte-identical to a clean run.

Two copies of the workflow run the same config: ``clean`` straight through, ``chaos``
interrupted ``--interruptions`` times at random moments, each interruption followed by a
rerun (``snakemake --rerun-incomplete``, after ``--unlock`` where a kill left the lock).
Each interruption is one of:

* ``kill9-all``  SIGKILL to Snakemake and every process below it (a power cut, an OOM kill);
* ``term-all``   SIGTERM to Snakemake (Ctrl-C, a cluster's scancel): it cancels its jobs;
* ``kill9-job``  SIGKILL to one running job (a node losing one process);
* ``term-job``   SIGTERM to one running job (a job's own time limit).

An interruption counts only when its target was running when the signal went out; the
delay before it starts once a job of the (re)started run is running. When the study
finishes before the interruptions add up, a fresh copy is interrupted next (a new pass,
``--max-passes``). After each pass the two results trees are compared: manifests, QC tables, split tables, every
predictions file, metrics JSON, study table (CSV, Markdown, LaTeX), the release
(weights, config, card) and the summary. Columns and keys that hold a measured time or
speed (:data:`TIME_FIELDS`) are left out, nothing else. The script prints every
interruption and the diff, writes ``chaos.json`` in the work folder, and exits 1 when any
file differs or a rerun failed after the interruptions stopped.

    OMP_NUM_THREADS=1 python benchmarks/chaos.py --interruptions 20 --workdir /tmp/chaos
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "rules", "workflow", "config", "envs", "profiles")
ACTIONS = ("kill9-all", "term-all", "kill9-job", "term-job")
# measured times and speeds: the only values allowed to differ between two runs
TIME_FIELDS = re.compile(r"(^|_)(time|times|seconds|wall|wall_s|cpu_s|elapsed|duration|throughput|per_s|"
                         r"images_per_s|img_per_s|started|finished|timestamp|date|peak_rss|rss|gpu_mem)($|_)"
                         r"|_s$|_ms$|^extract_s$|per_second|imgs?_s", re.I)
# the results compared (globs below results/)
COMPARED = ("manifests/*.csv", "preprocessed/*/qc.csv", "preprocessed/*/preprocess_spec.json", "splits/**/*.csv",
            "overlap/*.csv", "finetune/**/predictions_*.csv", "pretrain/*/predictions_*.csv",
            "finetune/**/model.safetensors", "pretrain/*/model.safetensors", "metrics/**/*.json", "tables/*",
            "protocol/*", "release/*", "summary/*")


def copy_workflow(dest: Path, config: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy(src, dest / name)
    shutil.copy(config, dest / "config" / "config.yaml")


def snakemake_cmd(cores: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--cores", str(cores), "--rerun-incomplete", *extra]


SRC: Path | None = None  # a snapshot of src/ both runs import (edits made meanwhile change neither)


def env() -> dict:
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", "1")
    if SRC is not None:
        e["PYTHONPATH"] = str(SRC) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.pop("MLFLOW_TRACKING_URI", None)  # each copy uses its own results/mlflow.db
    return e


def run(wd: Path, cores: int, log, *extra: str) -> int:
    return subprocess.call(snakemake_cmd(cores, *extra), cwd=wd, stdout=log, stderr=subprocess.STDOUT, env=env())


def unlock(wd: Path, log) -> None:
    subprocess.call([sys.executable, "-m", "snakemake", "--unlock", "--cores", "1"], cwd=wd, stdout=log,
                    stderr=subprocess.STDOUT, env=env())


def job_processes(root_pid: int):
    """Running job processes below Snakemake: the ``fundusfm`` verbs (shell wrappers aside)."""
    import psutil

    try:
        kids = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in kids:
        try:
            cmd = p.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(part.endswith("fundusfm") or part == "fundusfm.cli" for part in cmd[:3]):
            out.append(p)
    return out


def interrupt(proc: subprocess.Popen, action: str, rng: random.Random) -> str | None:
    """Send ``action``'s signal; returns what was hit, or ``None`` when nothing ran."""
    import psutil

    if proc.poll() is not None:
        return None
    if action == "kill9-all":
        try:
            tree = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        for p in [psutil.Process(proc.pid), *tree]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        return f"snakemake and {len(tree)} process(es) below it"
    if action == "term-all":
        proc.send_signal(signal.SIGTERM)
        return "snakemake"
    jobs = job_processes(proc.pid)
    if not jobs:
        return None
    p = rng.choice(jobs)
    try:
        what = " ".join(p.cmdline()[1:4])
        p.send_signal(signal.SIGKILL if action == "kill9-job" else signal.SIGTERM)
    except psutil.NoSuchProcess:
        return None
    return f"job {what} ..."


def _csv_rows(data: bytes) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8", "replace"))))
    if not rows:
        return rows
    keep = [i for i, name in enumerate(rows[0]) if not TIME_FIELDS.search(name)]
    return [[r[i] if i < len(r) else "" for i in keep] for r in rows]


def _drop_times(obj):
    if isinstance(obj, dict):
        return {k: _drop_times(v) for k, v in obj.items() if not TIME_FIELDS.search(str(k))}
    if isinstance(obj, list):
        return [_drop_times(v) for v in obj]
    return obj


def model_facts_lines(text: str) -> str:
    """A Markdown / LaTeX table with its measured speed column blanked (the models'
    throughput, measured on the machine of the run): in every table whose header names a
    ``Throughput`` column, that cell of each row."""
    out, col, sep = [], None, None
    for line in text.splitlines():
        cells, this = None, None
        for mark in ("|", "&"):
            if mark in line:
                cells, this = line.split(mark), mark
                break
        if cells is None:
            col = None if not line.strip() else col
        elif any("throughput" in c.lower() for c in cells):
            col, sep = next(i for i, c in enumerate(cells) if "throughput" in c.lower()), this
        elif col is not None and this == sep and len(cells) > col:
            cells[col] = " <speed> "
            line = sep.join(cells)
        out.append(line)
    return "\n".join(out)


def without_times(path: Path):
    """A file's content without its time fields: CSV rows without time columns, JSON
    without time keys, Markdown / LaTeX with the models' measured speed blanked; other
    files as bytes."""
    data = path.read_bytes()
    if path.suffix == ".csv":
        return _csv_rows(data)
    if path.suffix == ".json":
        return _drop_times(json.loads(data))
    if path.suffix in (".md", ".tex"):
        return model_facts_lines(data.decode("utf-8", "replace"))
    return data


def compare(clean: Path, chaos: Path) -> dict:
    a, b = clean / "results", chaos / "results"
    files_a = {p.relative_to(a).as_posix() for g in COMPARED for p in a.glob(g) if p.is_file()}
    files_b = {p.relative_to(b).as_posix() for g in COMPARED for p in b.glob(g) if p.is_file()}
    out = {"compared": 0, "identical_bytes": 0, "identical_without_times": 0, "differ": [],
           "only_clean": sorted(files_a - files_b), "only_chaos": sorted(files_b - files_a), "time_fields_left_out": []}
    for rel in sorted(files_a & files_b):
        out["compared"] += 1
        pa, pb = a / rel, b / rel
        if pa.read_bytes() == pb.read_bytes():
            out["identical_bytes"] += 1
        elif pa.suffix in (".csv", ".json", ".md", ".tex") and without_times(pa) == without_times(pb):
            out["identical_without_times"] += 1
            out["time_fields_left_out"].append(rel)
        else:
            out["differ"].append(rel)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interruptions", type=int, default=20)
    ap.add_argument("--workdir", default="/tmp/fundusfm-chaos")
    ap.add_argument("--config", default=str(REPO / "tests" / "configs" / "tiny.yaml"))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-delay", type=float, default=1.0,
                    help="seconds after the first job of a (re)start is running before a signal")
    ap.add_argument("--max-delay", type=float, default=12.0)
    ap.add_argument("--keep", action="store_true", help="reuse a finished clean run in WORKDIR/clean (and its src/)")
    ap.add_argument("--max-passes", type=int, default=3, help="fresh copies interrupted at most (each compared)")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    wd = Path(a.workdir)
    clean, chaos = wd / "clean", wd / "chaos"
    global SRC
    SRC = wd / "src"
    if not (a.keep and SRC.is_dir()):
        shutil.rmtree(SRC, ignore_errors=True)
        shutil.copytree(REPO / "src", SRC, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    t0 = time.time()
    if not (a.keep and (clean / "results" / "release" / "config.json").is_file()):
        shutil.rmtree(clean, ignore_errors=True)
        copy_workflow(clean, Path(a.config))
        with open(wd / "clean.log", "w") as log:
            rc = run(clean, a.cores, log)
        print(f"clean run: exit {rc} in {time.time() - t0:.0f} s", flush=True)
        if rc:
            print(f"the clean run failed; see {wd / 'clean.log'}")
            return 1
    passes, total = [], 0
    # a pass: a fresh copy interrupted until the target is met or the study finishes first,
    # then run to the end and compared; passes follow until the interruptions add up
    while total < a.interruptions and len(passes) < a.max_passes:
        res = one_pass(a, rng, clean, chaos, wd, a.interruptions - total, len(passes) + 1)
        passes.append(res)
        total += res["interruptions"]
    ok = True
    for i, res in enumerate(passes, 1):
        diff = res["diff"]
        kinds = ", ".join(f"{k} {sum(e['action'] == k for e in res['events'])}" for k in ACTIONS)
        print(f"pass {i}: {res['interruptions']} interruptions ({kinds}), {res['runs_of_snakemake']} runs of snakemake, "
              f"final exit {res['final_exit']}, {len(res['failed_reruns'])} failed rerun(s); compared "
              f"{diff['compared']} files: {diff['identical_bytes']} byte-identical, {diff['identical_without_times']} "
              f"identical without time fields {diff['time_fields_left_out']}, {len(diff['differ'])} differ "
              f"{diff['differ']}; only in clean {diff['only_clean']}, only in chaos {diff['only_chaos']}")
        ok &= res["final_exit"] == 0 and not diff["differ"] and not diff["only_clean"] and not diff["only_chaos"]
    print(f"total: {total} interruptions in {len(passes)} pass(es), {'no difference' if ok else 'DIFFERENCES'}")
    (wd / "chaos.json").write_text(json.dumps({"interruptions": total, "passes": passes}, indent=1))
    return 0 if ok and total >= a.interruptions else 1


def one_pass(a, rng, clean: Path, chaos: Path, wd: Path, wanted: int, number: int) -> dict:
    shutil.rmtree(chaos, ignore_errors=True)
    copy_workflow(chaos, Path(a.config))
    # the profile's keep-going would run every other job of the study after one job is
    # killed; here a killed job ends the run, and the next round reruns it
    prof = chaos / "profiles" / "default" / "config.yaml"
    prof.write_text(prof.read_text().replace("keep-going: true", "keep-going: false"))
    events, reruns, failed_reruns = [], 0, []
    log = open(wd / f"chaos{number}.log", "w")
    t1 = time.time()
    while len(events) < wanted:
        unlock(chaos, log)
        reruns += 1
        proc = subprocess.Popen(snakemake_cmd(a.cores), cwd=chaos, stdout=log, stderr=subprocess.STDOUT, env=env(),
                                start_new_session=True)
        delay = rng.uniform(a.min_delay, a.max_delay)
        action = rng.choice(ACTIONS)
        # the clock starts once a job runs (Snakemake's own start-up is not what is tested),
        # so each round interrupts work and the study cannot finish in a few long rounds
        started = time.time()
        while proc.poll() is None and not job_processes(proc.pid) and time.time() - started < 300:
            time.sleep(0.5)
        try:
            rc = proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            rc = None
        if rc is not None:
            if rc == 0:
                print(f"  pass {number}: the study finished before interruption {len(events) + 1}", flush=True)
                break
            failed_reruns.append({"after": len(events), "exit": rc})
            continue
        hit = interrupt(proc, action, rng)
        try:
            proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if hit is None:
            continue
        events.append({"n": len(events) + 1, "action": action, "after_s": round(delay, 1), "hit": hit,
                       "exit": proc.returncode})
        print(f"  pass {number}, interruption {len(events):2d}: {action:<9} after {delay:5.1f} s -> {hit} "
              f"(exit {proc.returncode})", flush=True)
    # to the end: a failure now is a finding (reported), retried a few times
    final_rc = None
    for attempt in range(3):
        unlock(chaos, log)
        reruns += 1
        final_rc = run(chaos, a.cores, log)
        if final_rc == 0:
            break
        failed_reruns.append({"after": len(events), "exit": final_rc, "final_attempt": attempt + 1})
    log.close()
    return {"interruptions": len(events), "events": events, "runs_of_snakemake": reruns,
            "failed_reruns": failed_reruns, "final_exit": final_rc, "chaos_wall_s": round(time.time() - t1),
            "diff": compare(clean, chaos)}


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the disk-cleanup runbook against find(1) on identical trees, as the tree grows.

    .venv/bin/python -m bench.cleanup [--files 250000,1000000] [--repeat 3] [--dir DIR] [--write docs/benchmarks.md]

A tree of N one-byte files, 1,000 per directory, 30 % of them 30 days old (the rest from today), is built once
per size and copied (``cp -a``, untimed, then ``sync``) before every destructive run, so each contender deletes
an identical tree with the same cache state. For each size:

- selection: ``find ROOT -type f -mtime +7 | wc -l`` against the runbook's dry run, repeated and interleaved;
- deletion: ``find ROOT -type f -mtime +7 -delete`` against the runbook deleting the same files;

each runbook contender twice: flow-internal (``runbooks.adapters.cleanup.clean_tree`` in a fresh process: the walk, the
decisions, the unlinks and the manifest, with that process's peak RSS) and whole-process (``runbooks run
disk-cleanup --param force=true [--param dry_run=false]`` against a running Prefect server, what an operator
waits for, with its peak RSS). The runbook's survey (du) is off in the bench config: it is a second walk an
operator can turn off, measured separately by nobody's target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.measure import flow_env
from runbooks_sandbox import Sandbox

PER_DIR = 1000
OLD_SHARE = 0.3
CHILD = r"""
import json, sys, time
from datetime import timedelta
from pathlib import Path
from runbooks.adapters.cleanup import Budget, Ledger, Manifest, Walk, clean_tree, open_files
from runbooks.settings import FileRule, CleanupSettings
root, dry, manifest = Path(sys.argv[1]), sys.argv[2] == "dry", Path(sys.argv[3])
rule = FileRule(name="bench", roots=[root], older_than=timedelta(days=7), match_all=True)
started = time.perf_counter()
walk = Walk(ledger=Ledger([], high=85, low=80, force=True), budget=Budget(10**9, 10**15), manifest=Manifest(manifest),
            protected_patterns=CleanupSettings().protected, held=open_files(), dry_run=dry)
out = clean_tree(rule, root, walk)
walk.manifest.close()
print(json.dumps({"seconds": time.perf_counter() - started, "files": out.files}))
"""


def build_tree(root: Path, files: int) -> None:
    """``files`` files of one byte, 1,000 a directory in 50-directory groups, every third-ish one 30 days old."""
    old = time.time() - 30 * 86400
    for d in range(files // PER_DIR):
        directory = root / f"g{d // 50:04d}" / f"d{d:05d}"
        directory.mkdir(parents=True)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(PER_DIR):
                name = f"f{i:04d}.log"
                fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=dir_fd)
                os.write(fd, b"x")
                if i % 10 < OLD_SHARE * 10:
                    os.utime(fd, (old, old))
                os.close(fd)
        finally:
            os.close(dir_fd)


def copy(template: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    subprocess.run(["cp", "-a", str(template), str(target)], check=True)
    subprocess.run(["sync"], check=True)


def timed(argv: list[str], env: dict[str, str] | None = None, *, shell: bool = False) -> tuple[float, float, bytes]:
    """Wall seconds, peak RSS (MB, by GNU time: a forked child's own ru_maxrss would count this process's
    pages until exec) and stdout of one process."""
    command = ["bash", "-o", "pipefail", "-c", argv[0]] if shell else argv
    with tempfile.NamedTemporaryFile("r") as rss_file:
        started = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *command], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"{argv} failed: {proc.stdout.decode()[-2000:]}")
        return wall, int(rss_file.read().split()[-1]) / 1024, proc.stdout


def engine(root: Path, *, dry: bool, manifest: Path) -> tuple[float, float, int]:
    """Flow-internal: clean_tree in a fresh process (its own seconds, files; the process's peak RSS)."""
    _, rss, out = timed([sys.executable, "-c", CHILD, str(root), "dry" if dry else "real", str(manifest)])
    figures = json.loads(out)
    return figures["seconds"], rss, figures["files"]


def write_config(path: Path, base: str, root: Path, state: Path) -> None:
    path.write_text("\n".join([
        f"state_dir = {json.dumps(str(state))}", "", "[cleanup]", f"watch = [{json.dumps(base)}]",
        f"allowed_roots = [{json.dumps(str(root))}]", "survey = []", "", "[[cleanup.rules]]", 'kind = "files"',
        'name = "bench"', f"roots = [{json.dumps(str(root))}]", 'older_than = "7d"', "match_all = true", ""]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", default="250000,1000000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="where trees go (default: a temp dir on the /tmp filesystem)")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    sizes = [int(s) for s in args.files.split(",")]
    base = Path(tempfile.mkdtemp(prefix="bench-cleanup-", dir=args.dir))
    base.chmod(0o755)
    box = Sandbox(base / "sandbox")
    rows: list[dict[str, Any]] = []
    try:
        print("starting a Prefect server (the sandbox's) for the whole-process runs …", flush=True)
        state = box.up(redis=False, pm2=False, size_mb=1, prefect=True, progress=lambda m: None)
        config = base / "bench.toml"
        work = base / "tree"
        write_config(config, str(base), work, base / "state")
        env = flow_env(str(config), state.prefect_api_url)
        cli = [sys.executable, "-m", "runbooks.cli", "run", "disk-cleanup", "--json", "--param", "force=true"]
        for size in sizes:
            template = base / f"template-{size}"
            started = time.perf_counter()
            build_tree(template, size)
            print(f"{size} files built in {time.perf_counter() - started:.0f} s", flush=True)
            copy(template, work)
            selection: dict[str, list[tuple[float, float]]] = {"find": [], "engine": [], "process": []}
            for _ in range(args.repeat):
                wall, rss, out = timed([f"find {work} -type f -mtime +7 | wc -l"], shell=True)
                expected = int(out)
                selection["find"].append((wall, rss))
                seconds, rss, files = engine(work, dry=True, manifest=base / "m.gz")
                assert files == expected, (files, expected)
                selection["engine"].append((seconds, rss))
                wall, rss, out = timed(cli, env)
                assert json.loads(out)["files"][0]["files"] == expected
                selection["process"].append((wall, rss))
            deletion: dict[str, tuple[float, float]] = {}
            copy(template, work)
            deletion["find"] = timed([f"find {work} -type f -mtime +7 -delete"], shell=True)[:2]
            copy(template, work)
            seconds, rss, files = engine(work, dry=False, manifest=base / "m.gz")
            assert files == expected
            deletion["engine"] = (seconds, rss)
            copy(template, work)
            wall, rss, out = timed([*cli, "--param", "dry_run=false"], env)
            assert json.loads(out)["files"][0]["files"] == expected
            deletion["process"] = (wall, rss)
            shutil.rmtree(template)
            med = {k: sorted(v)[len(v) // 2] for k, v in selection.items()}
            rows.append({"files": size, "old": expected, "selection": med, "deletion": deletion})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        box.down()
        shutil.rmtree(base, ignore_errors=True)
    report = render(rows, args.repeat)
    print(report)
    if args.write:
        with args.write.open("a") as out_file:
            out_file.write("\n" + report)


def render(rows: list[dict[str, Any]], repeat: int) -> str:
    find_version = subprocess.run(["find", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    lines = [f"### Disk cleanup benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
             f"vm: {os.cpu_count()} cores, Python {platform.python_version()}, {find_version}. "
             "Trees of one-byte files, "
             f"1,000 a directory, 30 % 30 days old. Selection: medians of {repeat} interleaved rounds on one tree; "
             "deletion: one run each on identical fresh copies. Flow-internal = `clean_tree` (walk, decisions, "
             "unlinks, manifest) in a fresh process; whole process = `runbooks run disk-cleanup` against a running "
             "Prefect server.", "",
             "| files | work | contender | seconds | vs find | peak RSS |", "|---|---|---|---|---|---|"]
    for row in rows:
        for work, label, figures in (("select", "selection", row["selection"]), ("delete", "deletion",
                                                                                  row["deletion"])):
            base = figures["find"][0]
            raw = "`find -mtime +7 \\| wc -l`" if work == "select" else "`find -mtime +7 -delete`"
            for key, name in (("find", raw), ("engine", "runbook, flow-internal"),
                              ("process", "runbook, whole process")):
                seconds, rss = figures[key]
                lines.append(f"| {row['files']:,} | {label} ({row['old']:,} old) | {name} | {seconds:.2f} | "
                             f"{seconds / base:.2f}x | {rss:.0f} MB |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

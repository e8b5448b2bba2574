"""Import benchmark: N generated rows through the real CLI into a fresh SQLite database.

    .venv/bin/python bench/import_bench.py                 # 1,000,000 rows
    .venv/bin/python bench/import_bench.py --rows 100000 --reimport

Generates a CSV like an operator's Excel export (GBK, Chinese headers, 4 columns) with a realistic
mix: mostly plain 11-digit mobiles, ~14% in other formats (+86 with spaces, 0086-, 86, full-width,
Excel's ', ="…", .0), ~5% repeats of an earlier number (often in another format), ~3% bad rows
(landline, too short, 154 prefix, Excel scientific notation, empty). Then runs
``broadcaster recipients import FILE --list bench --json`` in a child process and reports its wall
time, rows/s and peak RSS, and checks the counts add up. Peak RSS is the largest sum over the import's
process tree (the CLI and its row-preparing helper, sampled every 20 ms from /proc), so a helper's
memory is never left out; getrusage's figure (the largest single process) is printed beside it.

Baseline, measured in the same run: the bare cost of ``phonenumbers.parse`` + ``is_valid_number`` +
``number_type`` + E.164 formatting on the same raw values (a random sample, extrapolated to N rows),
i.e. what validating every row with phonenumbers alone would cost, without reading or writing anything.
Targets: 1M rows in under 60 s and under 300 MB peak RSS.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PREFIXES = [f"13{d}" for d in range(10)] + ["150", "151", "152", "153", "155", "156", "157", "158", "159"]
PREFIXES += [f"18{d}" for d in range(10)] + ["166", "173", "177", "199"]
CITIES = ["北京", "上海", "广州", "深圳", "杭州", "南京", "武汉", "成都", "西安", "沈阳", "长春", "哈尔滨"]
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华"
UNITS = ["质监局", "机械厂", "食品公司", "检测中心", "电器公司", "建材厂"]
TARGET_SECONDS = 60.0
TARGET_RSS_MB = 300.0


def number(i: int) -> str:
    """The i-th distinct mobile: a prefix and a permuted 8-digit suffix (no two i collide)."""
    prefix = PREFIXES[i % len(PREFIXES)]
    suffix = (i // len(PREFIXES)) * 7_919_993 % 100_000_000
    return f"{prefix}{suffix:08d}"


def formatted(n: str, rnd: random.Random) -> str:
    x = rnd.random()
    if x < 0.86:
        return n
    if x < 0.91:
        return f"+86 {n[:3]} {n[3:7]} {n[7:]}"
    if x < 0.93:
        return f"0086-{n[:3]}-{n[3:7]}-{n[7:]}"
    if x < 0.95:
        return "86" + n
    if x < 0.96:
        return n.translate(str.maketrans("0123456789", "０１２３４５６７８９"))
    if x < 0.98:
        return "'" + n
    if x < 0.99:
        return f'="{n}"'
    return n + ".0"


def bad(rnd: random.Random) -> str:
    return rnd.choice(
        [
            f"010-6{rnd.randrange(10**7):07d}",  # landline
            str(rnd.randrange(10**4, 10**6)),  # too short
            f"154{rnd.randrange(10**8):08d}",  # never valid
            f"1.{rnd.randrange(10**5):05d}E+10",  # Excel scientific notation
            "",  # empty
        ]
    )


def generate(path: Path, rows: int, encoding: str, seed: int = 2011) -> list[str]:
    """Write the CSV; return a sample of its raw phone values for the baseline."""
    rnd = random.Random(seed)
    sample: list[str] = []
    distinct = 0
    with path.open("w", encoding=encoding, newline="") as f:
        out = csv.writer(f)
        out.writerow(["手机号码", "姓名", "城市", "单位"])
        for _ in range(rows):
            x = rnd.random()
            if x < 0.03:
                phone = bad(rnd)
            elif x < 0.08 and distinct:
                phone = formatted(number(rnd.randrange(distinct)), rnd)  # a repeat
            else:
                phone = formatted(number(distinct), rnd)
                distinct += 1
            name = (
                rnd.choice(SURNAMES) + rnd.choice(GIVEN) + (rnd.choice(GIVEN) if rnd.random() < 0.6 else "")
            )
            out.writerow([phone, name, rnd.choice(CITIES), rnd.choice(CITIES) + rnd.choice(UNITS)])
            if len(sample) < 200_000 and rnd.random() < 0.25:
                sample.append(phone)
    return sample


def baseline(values: list[str]) -> float:
    """Seconds per value for bare phonenumbers parse + validate + type + E.164."""
    import phonenumbers

    fmt = phonenumbers.PhoneNumberFormat.E164
    start = time.perf_counter()
    for raw in values:
        try:
            n = phonenumbers.parse(raw, "CN")
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(n):
            phonenumbers.number_type(n)
            phonenumbers.format_number(n, fmt)
    return (time.perf_counter() - start) / max(len(values), 1)


def _tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc), in KiB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue  # ended meanwhile
    return total


def _watch_tree(proc: subprocess.Popen, peak: list[int]) -> None:
    while proc.poll() is None:
        peak[0] = max(peak[0], _tree_rss_kib(proc.pid))
        time.sleep(0.02)


def run_import(csv_path: Path, db_path: Path) -> tuple[float, float, float, float, dict]:
    """(wall s, CPU s, peak RSS MB of the process tree, largest single process MB, JSON report)."""
    env = dict(os.environ)
    env.update(
        BROADCASTER_DATABASE_URL=f"sqlite:///{db_path}",
        BROADCASTER_VAR_DIR=str(db_path.parent / "var"),
        BROADCASTER_ACTOR="bench",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu_before = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broadcaster",
            "recipients",
            "import",
            str(csv_path),
            "--list",
            "bench",
            "--json",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tree_peak = [0]
    watcher = threading.Thread(target=_watch_tree, args=(proc, tree_peak), daemon=True)
    watcher.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    watcher.join()
    if proc.returncode != 0:
        sys.exit(f"import failed ({proc.returncode}): {stderr.strip()}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    single, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime - cpu_before
    if single <= before:
        print("  (largest process not above an earlier child's; that figure is an upper bound)")
    return wall, cpu, tree_peak[0] / 1024, single / 1024, json.loads(stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--encoding", default="gbk", help="encoding of the generated file (default gbk)")
    parser.add_argument("--reimport", action="store_true", help="also time importing the same file again")
    parser.add_argument("--keep", type=Path, help="keep the CSV and database in this folder")
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="import-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, db_path = folder / "bench.csv", folder / "bench.db"
    for p in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        p.unlink(missing_ok=True)

    t = time.perf_counter()
    sample = generate(csv_path, args.rows, args.encoding)
    size_mb = csv_path.stat().st_size / 1e6
    print(
        f"generated {args.rows:,} rows ({size_mb:.1f} MB, {args.encoding}) in {time.perf_counter() - t:.1f} s"
    )

    load = os.getloadavg()[0]
    wall, cpu, rss_mb, single_mb, report = run_import(csv_path, db_path)
    keys = ("rows", "imported", "updated", "duplicates", "duplicates_in_file", "already_stored", "rejected")
    print("import report: " + ", ".join(f"{k} {report[k]:,}" for k in keys))
    print(f"  rejected by reason: {report['rejected_by_reason']}")
    total = report["imported"] + report["updated"] + report["duplicates"] + report["rejected"]
    assert report["rows"] == args.rows == total, "counts do not add up"

    per_value = baseline(sample)
    base = per_value * args.rows
    print(
        f"import:   {wall:6.1f} s  {args.rows / wall:>10,.0f} rows/s  peak RSS {rss_mb:.0f} MB  "
        f"(all its processes; largest one {single_mb:.0f} MB; CPU {cpu:.1f} s over its processes; "
        f"load average {load:.1f} before the import)"
    )
    print(
        f"baseline: {base:6.1f} s  {1 / per_value:>10,.0f} rows/s  (bare phonenumbers parse+validate, "
        f"{per_value * 1e6:.1f} µs/value on a {len(sample):,}-value sample of the same file)"
    )
    print(f"ratio import/baseline: {wall / base:.2f}")
    if args.reimport:
        wall2, _, rss2, _, report2 = run_import(csv_path, db_path)
        print(
            f"re-import: {wall2:6.1f} s  {args.rows / wall2:>10,.0f} rows/s  peak RSS {rss2:.0f} MB  "
            f"imported {report2['imported']}, updated {report2['updated']}, unchanged {report2['unchanged']}"
        )
    ok_time = wall < TARGET_SECONDS * args.rows / 1_000_000
    ok_rss = rss_mb < TARGET_RSS_MB
    print(
        f"targets (per 1M rows: < {TARGET_SECONDS:.0f} s, < {TARGET_RSS_MB:.0f} MB): "
        f"time {'met' if ok_time else 'MISSED'}, memory {'met' if ok_rss else 'MISSED'}"
    )
    if not args.keep:
        for p in folder.iterdir():
            if p.is_file():
                p.unlink()
    print(f"files in {folder}" if args.keep else "")


if __name__ == "__main__":
    main()

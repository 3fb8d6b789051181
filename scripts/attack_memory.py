"""Where the server's memory goes across `streamrec-bench mixed-attack`'s phases (issue 14's RSS bar).

Runs the benchmark's own phases against a server subprocess (its default settings; set knobs through
`STREAMREC_EMBEDDER_*` variables, glibc's through `MALLOC_*_`): normal calls, the attack, wait for idle,
a 2-s settle. Before the attack and after the settle it prints the server's RSS, the cache's bytes, its
largest mappings (/proc/<pid>/smaps) and, with gdb on the PATH, glibc's heap: bytes free and mapped
(`malloc_info`, attached with gdb). `--trim` then calls `malloc_trim(0)` in the server and reads RSS
again. Linux only; gdb needs ptrace rights over the child (root, or ptrace_scope 0).

    python scripts/attack_memory.py [--bundle models/streamrec-cnn-v2] [--seconds 60] [--trim]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import mixed_attack
from benchmarks.loadgen import wait_idle


def largest_mappings(pid: int, top: int = 4) -> dict[str, int]:
    """MiB resident per mapping name ([heap], [anon], a library's path), largest first."""
    rss: collections.Counter[str] = collections.Counter()
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if not parts[0].endswith(":"):
            name = Path(parts[5]).name if len(parts) > 5 else "[anon]"
        elif parts[0] == "Rss:":
            rss[name] += int(parts[1])
    return {k: v // 1024 for k, v in rss.most_common(top)}


def _gdb(pid: int, *calls: str) -> None:
    cmd = ["gdb", "-p", str(pid), "-batch"]
    for call in calls:
        cmd += ["-ex", f"call {call}"]
    subprocess.run(cmd, capture_output=True, timeout=60, check=False)


def glibc_heap(pid: int) -> dict[str, float] | None:
    """glibc's totals in the server (MiB): heap obtained from the OS, free in it, mapped blocks."""
    if shutil.which("gdb") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "malloc_info.xml"
        _gdb(pid, f'(int)malloc_info(0, (void*)fopen("{out}", "w"))', "(int)fflush(0)")
        if not out.exists():
            return None
        xml = out.read_text()
    tail = xml[xml.rindex("</heap>") :]  # the totals after the last arena
    sizes = {
        f"{kind}": int(size)
        for kind, size in re.findall(r'<(?:total|system) type="(\w+)"[^>]*size="(\d+)"', tail)
    }
    mib = 2**20
    return {
        "heap_mib": round(sizes.get("current", 0) / mib, 1),
        "free_mib": round(sizes.get("rest", 0) / mib, 1),
        "mapped_mib": round(sizes.get("mmap", 0) / mib, 1),
    }


def snapshot(server: mixed_attack.Server) -> dict[str, Any]:
    pid = server.proc.pid
    return {
        "rss_mib": round(server.rss_mib(), 1),
        "cache_mib": round(server.cache_mib(), 1),
        "mappings_mib": largest_mappings(pid),
        "glibc": glibc_heap(pid),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", default="models/streamrec-cnn-v2")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--trim", action="store_true", help="malloc_trim(0) in the server at the end")
    args = parser.parse_args()
    server = mixed_attack.start_server(args.bundle)
    try:
        asyncio.run(mixed_attack.normal_phase(server.address, 10.0))
        before = snapshot(server)
        print(json.dumps({"before": before}), flush=True)
        tallies = mixed_attack.attack_phase(server.address, args.seconds)
        wait_idle(server.proc.pid)
        asyncio.run(mixed_attack.normal_phase(server.address, 2.0))
        after = snapshot(server)
        print(json.dumps({"after": after}), flush=True)
        if args.trim:
            _gdb(server.proc.pid, "(int)malloc_trim(0)")
            print(json.dumps({"after_trim_rss_mib": round(server.rss_mib(), 1)}), flush=True)
        net = (after["rss_mib"] - after["cache_mib"]) / (before["rss_mib"] - before["cache_mib"]) - 1
        codes = {name: dict(tally.codes) for name, tally in tallies.items()}
        print(json.dumps({"growth_net_of_cache": round(net, 3), "codes": codes}), flush=True)
    finally:
        server.proc.terminate()
        server.proc.wait(30)


if __name__ == "__main__":
    main()

"""What the running lab holds in the kernel (`invoke lab.inspect`), run in the VM as root:
python3 -c "$INSPECT" [xlated|jited PROGRAM_ID].

The lab is the program that bpflab's supervisor (/run/bpflab-lab.pid) runs. Its BPF programs and
maps are those whose descriptors the supervisor's descendants hold (their fdinfo names the ids:
bpftool's own `pids` needs a build with skeletons, which Debian 12's lacks), each program with
where it is attached
(perf events and links) and, with the kernel's BPF statistics on (this turns them on), how
often it ran and for how long; its maps with their entries, decoded through BTF where the map
has it. Prints one JSON object.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

ENTRIES = 20  # per map: enough to watch, few enough to read


def bpftool(*args: str):
    result = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True)
    return json.loads(result.stdout) if result.returncode == 0 and result.stdout.strip() else []


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def held(pids: set[int]) -> tuple[set[int], set[int]]:
    """The ids of the BPF programs (links included) and maps that these processes hold."""
    programs, maps = set(), set()
    for pid in pids:
        for info in Path(f"/proc/{pid}/fdinfo").glob("*"):
            try:
                lines = info.read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                name, _, value = line.partition(":")
                if name == "prog_id":
                    programs.add(int(value))
                elif name == "map_id":
                    maps.add(int(value))
    return programs, maps


def attach_points() -> dict[int, list[str]]:
    """prog id -> where it is attached: kprobes, tracepoints, uprobes (perf events) and links."""
    points: dict[int, list[str]] = {}
    for event in bpftool("perf", "list"):
        where = event.get("func") or event.get("tracepoint") or event.get("filename") or "?"
        attach(points, event["prog_id"], f"{event.get('fd_type', 'perf')} {where}")
    for link in bpftool("link", "list"):
        where = link.get("tp_name") or link.get("attach_type") or link.get("type")
        attach(points, link.get("prog_id"), f"{link.get('type')} {where}")
    return points


def attach(points: dict[int, list[str]], program: int, where: str) -> None:
    """A raw tracepoint shows in both lists (its link is a perf event's too): once is enough."""
    if where not in points.setdefault(program, []):
        points[program].append(where)


def plain(value):
    """A key or value that bpftool could not decode (no BTF): its bytes as a number, where they
    are one (a u32 or u64, little-endian as in the VM), per CPU for a per-CPU map, else as they are."""
    if isinstance(value, list) and 0 < len(value) <= 8 and all(str(byte).startswith("0x") for byte in value):
        return int.from_bytes(bytes(int(byte, 16) for byte in value), "little")
    if isinstance(value, list) and all(isinstance(item, dict) and "cpu" in item for item in value):
        return [plain(item.get("value")) for item in value]  # a per-CPU map: one value per CPU
    return value


def entries(map_id: int) -> tuple[list[str], int]:
    """The map's entries as `key: value` lines (through BTF where it has it), and how many."""
    lines = []
    dumped = bpftool("map", "dump", "id", str(map_id))
    for entry in dumped if isinstance(dumped, list) else []:
        shown = entry.get("formatted", entry)
        key, value = plain(shown.get("key")), plain(shown.get("value", shown.get("values")))
        lines.append(f"{json.dumps(key)}: {json.dumps(value)}")
    return lines[:ENTRIES], len(lines)


def main() -> None:
    try:
        supervisor = int(Path("/run/bpflab-lab.pid").read_text().strip() or 0)
        owner = Path("/run/bpflab-lab.owner").read_text().strip()
    except (OSError, ValueError):
        supervisor, owner = 0, ""
    if not supervisor or not Path(f"/proc/{supervisor}").exists():
        print(json.dumps({"lab": None}))
        return
    if not shutil.which("bpftool"):
        print(json.dumps({"lab": owner, "missing": "bpftool"}))
        return
    Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1\n")
    program_ids, held_maps = held(descendants(supervisor))
    points = attach_points()
    programs, map_ids = [], sorted(held_maps)
    for prog in bpftool("prog", "show"):
        if prog["id"] not in program_ids:
            continue
        programs.append(
            {
                "id": prog["id"],
                "type": prog.get("type"),
                "name": prog.get("name", ""),
                "attached": points.get(prog["id"], []),
                "run_cnt": prog.get("run_cnt"),
                "run_time_ns": prog.get("run_time_ns"),
            }
        )
        map_ids += [map_id for map_id in prog.get("map_ids", []) if map_id not in map_ids]
    maps = []
    for map_id in map_ids:
        shown = bpftool("map", "show", "id", str(map_id))
        lines, count = entries(map_id)
        maps.append(
            {"id": map_id, "type": shown.get("type"), "name": shown.get("name", ""), "entries": lines, "count": count}
        )
    dump = ""
    if len(sys.argv) == 3:
        result = subprocess.run(
            ["bpftool", "prog", "dump", sys.argv[1], "id", sys.argv[2]], capture_output=True, text=True
        )
        dump = result.stdout or result.stderr
    print(json.dumps({"lab": owner, "programs": programs, "maps": maps, "dump": dump}))


if __name__ == "__main__":
    main()

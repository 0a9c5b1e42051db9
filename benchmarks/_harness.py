"""benchmarks/_harness.py: the one benchmark harness of the bench_*.py scripts — the timer
(torch.utils.benchmark on CPU, CUDA events on GPU; medians), interleaved rounds for shared
machines, the peak memory of a call (in a fresh child process on CPU, the caching allocator's
high-water mark on CUDA), the machine/CPU/torch line, and a report that prints markdown tables
row by row and can write the same rows as JSON (--json PATH)."""
import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys

import torch
import torch.utils.benchmark as tbench

# ---- what machine this is ----


def cpu_model():
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device="cpu"):
    """torch version, threads, lowbit's CPU ISA, the CPU (and GPU), the date."""
    import lowbit

    dev = f", {torch.cuda.get_device_name()}" if device == "cuda" else ""
    return (f"torch {torch.__version__}, threads {torch.get_num_threads()}, lowbit ISA "
            f"{lowbit.get_cpu_isa()}, {cpu_model()} ({os.cpu_count()} cores){dev}, "
            f"{datetime.date.today().isoformat()}")


def parser(doc, devices=("cpu", "cuda")):
    """An ArgumentParser with the options every bench script takes."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=list(devices))
    ap.add_argument("--quick", action="store_true", help="fewer shapes, short timing")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    return ap


# ---- timing ----


def median_time(fn, device="cpu", min_run=0.5, reps=20, warmup=3):
    """Median seconds per call of fn(): torch.utils.benchmark's blocked_autorange on CPU (blocks
    of calls for at least min_run seconds), CUDA events around each of ``reps`` calls on GPU."""
    if device != "cuda":
        t = tbench.Timer("fn()", globals={"fn": fn})
        return t.blocked_autorange(min_run_time=min_run).median
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return times[len(times) // 2]


def interleaved(fns, device="cpu", min_run=0.5, rounds=3):
    """Per fn, the median over ``rounds`` alternating measurements (a shared, noisy machine
    slows every fn alike instead of whichever ran during the noise)."""
    out = [[] for _ in fns]
    for _ in range(rounds):
        for i, f in enumerate(fns):
            out[i].append(median_time(f, device, min_run))
    return [sorted(t)[len(t) // 2] for t in out]


# ---- peak memory ----


def rss_kb(field):
    """A memory field of /proc/self/status in kB, e.g. "VmRSS" or "VmHWM" (the peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def reset_peak_rss():
    """Resets the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_CHILD = """
import json, sys
sys.path.insert(0, {here!r})
import _harness as h
run = getattr(h._load({script!r}), {func!r})(*{args!r})
h.reset_peak_rss()
base = h.rss_kb("VmRSS")
run()
print(json.dumps({{"grow": (h.rss_kb("VmHWM") - base) * 1024}}))
"""


def child_peak_bytes(script, func, *args):
    """Peak RSS growth (bytes) of one call, measured in a fresh child process: the child imports
    ``script``, calls ``func(*args)`` (which builds the inputs and returns a zero-argument
    callable), resets the peak mark, and runs the callable once. args: literals (repr'd)."""
    code = _CHILD.format(here=os.path.dirname(os.path.abspath(__file__)),
                         script=os.path.abspath(script), func=func, args=tuple(args))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["grow"]


def cuda_peak_bytes(run):
    """Peak CUDA memory (bytes) allocated by run() above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


# ---- output ----


class Table:
    """A markdown table printed row by row. ``columns``: (header, format) pairs, e.g.
    ("lowbit ms", "{:.2f}"); row() takes the raw values (formatted for markdown, kept raw for
    JSON)."""

    def __init__(self, columns, name):
        self.name = name
        self.headers = [c[0] for c in columns]
        self.formats = [c[1] for c in columns]
        self.rows = []
        print("| " + " | ".join(self.headers) + " |")
        print("|" + "---|" * len(self.headers))

    def row(self, *values):
        if len(values) != len(self.headers):
            raise ValueError(f"row: expected {len(self.headers)} values, got {len(values)}")
        cells = [f.format(v) if v is not None else "-" for f, v in zip(self.formats, values)]
        print("| " + " | ".join(cells) + " |", flush=True)
        self.rows.append(dict(zip(self.headers, values)))


class Report:
    """One script's output: a title line with the machine line, tables, notes; save() writes
    {"title", "machine", "tables": {name: rows}, "notes"} to --json when given."""

    def __init__(self, title, args):
        self.args = args
        self.title = title
        self.machine = machine_line(args.device)
        self.tables, self.notes = {}, []
        print(f"# {title}; {self.machine}")

    def table(self, columns, name=None):
        print()
        t = Table(columns, name or f"table{len(self.tables) + 1}")
        self.tables[t.name] = t
        return t

    def note(self, text):
        print(text, flush=True)
        self.notes.append(text)

    def save(self):
        if not self.args.json:
            return
        with open(self.args.json, "w") as f:
            json.dump({"title": self.title, "machine": self.machine, "device": self.args.device,
                       "quick": self.args.quick, "notes": self.notes,
                       "tables": {n: t.rows for n, t in self.tables.items()}}, f, indent=1)


def mb(nbytes):
    return nbytes / 2 ** 20

"""benchmarks/_mem.py: peak-memory helpers the benchmark scripts share (Linux /proc)."""


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

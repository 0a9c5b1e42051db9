"""benchmarks/_mem.py: compatibility name for the peak-RSS helpers, which now live in
_harness.py (the one benchmark harness); bench_kl_loss.py and bench_qat_step.py import them from
here until they adopt _harness (then delete this file)."""
from _harness import reset_peak_rss, rss_kb  # noqa: F401

"""python/lowbit/distill/plot.py: the PNG of a DistillTrainer history (training loss and
held-out perplexity against steps), with matplotlib when it is installed."""


def plot_history(history, path):
    """PNG of training loss and held-out perplexity; silently skipped without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(steps, [r["loss"] for r in history])
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("distillation loss")
    ax[0].set_yscale("log")
    ev = [(r["step"], r["eval_ppl"]) for r in history if r.get("eval_ppl") not in ("", None)]
    if ev:
        ax[1].plot([s for s, _ in ev], [p for _, p in ev], marker="o")
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("held-out perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

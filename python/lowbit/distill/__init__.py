"""python/lowbit/distill/__init__.py: lowbit.distill, self-distillation QAT (BitDistiller's
method) as a library — the teacher's own training text (generate.py: batched sampling with the KV
cache, cached to safetensors), a frozen full-precision teacher copy and a quantize_'d student
(trainer.py: prepare, the trainer, with the confidence-aware KL loss optionally through the fused
LM head, never materialising the logits), block-wise initialisation (blockwise.py:
EfficientQAT's Block-AP), LR schedules (schedules.py), perplexity and CAKLD's
gamma (evaluate.py), the training curves (plot.py); batches.py reads the batches all of them take.

    # 1. all in one
    train = lowbit.distill.generate_data(model, tok, text_or_prompts, out="runs/gen.safetensors")
    student, teacher = lowbit.distill.prepare(model, lowbit.QATConfig(spec))
    trainer = lowbit.distill.DistillTrainer(student, teacher, lr=2e-5, kind="cakld", gamma="auto",
                                            fused_head=True, scheduler="cosine", warmup_steps=5)
    trainer.fit(train, steps=200, eval_batches=eval_batches, out_dir="runs/int2")

    # 2. your own loop
    for batch in loader:
        loss = trainer.step(batch)          # forward both models, loss, backward, optimizer
"""
from .blockwise import blockwise_init, decoder_blocks
from .evaluate import estimate_gamma_from, perplexity
from .generate import generate_data, pad_batches, prompts_from_text
from .plot import plot_history
from .schedules import make_scheduler
from .trainer import KINDS, DistillTrainer, make_teacher, prepare

__all__ = ["blockwise_init", "decoder_blocks", "make_teacher", "prepare", "generate_data", "prompts_from_text", "pad_batches",
           "estimate_gamma_from", "perplexity", "make_scheduler", "DistillTrainer",
           "plot_history", "KINDS"]

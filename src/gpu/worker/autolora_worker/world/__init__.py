"""The proving ground: a small FLUX-shaped world (procedural images, a base model, a LoRA pool, the trainers,
an evaluator) in which the whole AutoLoRA method runs end to end on a CPU and the paper's tables are measured.
"""

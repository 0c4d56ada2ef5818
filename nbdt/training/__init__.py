"""Training: the run's settings and plan, the one epoch loop, the run folder, the output stages,
and the recipes that use them (``nbdt-train``, head-only refits, fine-tuning after compression).
"""

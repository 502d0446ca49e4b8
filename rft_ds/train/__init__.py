"""The training pass (`train`, `shad-train`): one loop for SHAD tuning, SFT, RFT and the
baselines (fixed weights, DFT).

    cli.py         flags -> TrainConfig; shad-train builds the shuffled pairs and calls the loop
    loop.py        the loop, read top to bottom: setup, then step -> metrics row -> checkpoint, final save
    step.py        the loss step: global counts, each micro-batch's loss, named metric sums
    checkpoint.py  DeepSpeed checkpoints every --save-steps, and --resume
    lora.py        LoRA adapters: the save from gathered weights, `merge-lora`
"""

"""The labeling pass (`label`): per-token LD = l_shad - l_base over data-parallel ranks -> masks.jsonl
(or, with --method regex, labels from a boilerplate regex in the same schema).

    cli.py     flags -> LabelConfig
    run.py     the pass, top to bottom: tokenize, plan, load both models, forward rounds, merge
    chunks.py  the batch plan, the work dir's manifest and resume, chunk files, the streaming merge
    regex.py   --method regex: the paper's Regex baseline, one process, the tokenizer only
"""

"""Collective boost-tuning of an SSM ensemble (SpecInfer section 5), one module per job:

    prompts   read prompt files (jsonl / txt) with errors naming file:line
    data      the LLM's own continuations -> token arrays + loss masks, resumable, in .npz chunks
    ssm       SSM configs (presets / JSON) and their initialisation from the LLM's embeddings
    train     optax training: masked cross-entropy, AdamW + warmup-cosine, exact --resume
    boosting  which samples / positions the ensemble already covers, and the next SSM's weights
    evaluate  top-k agreement, MAT with the real engine, the acceptance plot
    run       the whole `specjax boost` pipeline over an output directory
"""


class BoostError(ValueError):
    """Bad boost-tuning input: a prompt file, an SSM config, an output directory."""

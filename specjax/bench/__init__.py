"""Benchmarks: Spec-Bench against specjax incremental decoding and transformers (`specjax bench`).

    report      the arithmetic (MAT, tokens/s, speedup) and its tables and plot
    systems     the systems compared: specjax engines, transformers in a worker process
    hf_worker   that worker process
    run         questions, interleaved runs, batch mode, the output files
"""

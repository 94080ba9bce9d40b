"""Where the README's first command's wall time goes (cProfile over specjax.cli.main, cumulative times
of specjax's own functions; run it twice: the second run loads compiled code from the compile cache).

    python docs/experiments/spec-overhead/prof_cli.py
"""
import cProfile, pstats, time
t0 = time.perf_counter()
pr = cProfile.Profile(); pr.enable()
from specjax import cli
cli.main(["generate", "--chat", "--prompt", "What is speculative decoding?"])
pr.disable()
print(f"total {time.perf_counter() - t0:.1f} s")
pstats.Stats(pr).sort_stats("cumulative").print_stats(r"specjax/", 25)

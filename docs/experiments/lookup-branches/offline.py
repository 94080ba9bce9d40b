"""Offline: would prompt lookup gain from a second candidate continuation? Over the LLM's greedy
continuations of the 128 held-out prompts (a feature data directory: tokens + mask), at every position
of a continuation: the longest suffix n-gram (n <= 8) that occurred earlier; chain 1 = what followed its
most recent occurrence (lookup's proposal today), chain 2 = what followed the most recent occurrence
(of any n >= 1, longest first) whose next token differs from chain 1's. Accepted = the longest prefix
of a chain equal to the LLM's next tokens (up to 8). Prints mean accepted tokens per position for
chain 1 alone and for the better of the two, by the matched n.

    python docs/experiments/lookup-branches/offline.py runs/heldout/data
"""
import glob, sys
from collections import defaultdict
import numpy as np

L, NMAX = 8, 8
d = sys.argv[1] if len(sys.argv) > 1 else "runs/heldout/data"
one, best, count = defaultdict(float), defaultdict(float), defaultdict(int)
for part in sorted(glob.glob(f"{d}/tokens/part-*.npz")):
    f = np.load(part)
    for toks, m in zip(f["tokens"], f["mask"]):
        idx = np.flatnonzero(m)
        if not len(idx):
            continue
        start = int(np.flatnonzero(toks)[0]) if toks.any() else 0  # left padding
        seq = toks[start: idx[-1] + 1].tolist()
        first = idx[0] - start
        for p in range(first, len(seq) - 1):  # committed seq[:p+1], root seq[p]; truth seq[p+1:]
            truth = seq[p + 1: p + 1 + L]
            hist = seq[: p + 1]

            def follow(i):  # continuation after position i (the match ends at i), committed tokens only
                return hist[i + 1: min(i + 1 + L, p + 1)]

            def acc(c):
                k = 0
                while k < len(c) and k < len(truth) and c[k] == truth[k]:
                    k += 1
                return k
            c1, n1 = None, 0
            for n in range(min(NMAX, p), 0, -1):
                suf = hist[p - n + 1: p + 1]
                for i in range(p - 1, n - 2, -1):
                    if hist[i - n + 1: i + 1] == suf and i + 1 <= p:
                        c1, n1 = follow(i), n
                        break
                if c1:
                    break
            if not c1:
                count[0] += 1
                continue
            c2 = None
            for n in range(n1, 0, -1):
                suf = hist[p - n + 1: p + 1]
                for i in range(p - 1, n - 2, -1):
                    if hist[i - n + 1: i + 1] == suf:
                        c = follow(i)
                        if c and c[0] != c1[0]:
                            c2 = c
                            break
                if c2:
                    break
            a1 = acc(c1)
            a2 = acc(c2) if c2 else 0
            one[n1] += a1; best[n1] += max(a1, a2); count[n1] += 1
tot = sum(count.values())
print(f"{tot} positions; no match at {count[0]}")
for n in sorted(k for k in count if k):
    print(f"n={n}: {count[n]:6d} positions, chain 1 accepts {one[n] / count[n]:.3f}, best of two {best[n] / count[n]:.3f}")
print(f"all positions: chain 1 {sum(one.values()) / tot:.3f}, best of two {sum(best.values()) / tot:.3f} accepted tokens per step (bonus excluded)")

#!/usr/bin/env bash
# The README's first command with the compile cache off and on (warm), alternating, wall seconds.
#     bash docs/experiments/spec-overhead/cache_wall.sh
for i in 1 2; do
  for c in off on; do
    if [ $c = off ]; then export SPECJAX_COMPILE_CACHE=off; else unset SPECJAX_COMPILE_CACHE; fi
    /usr/bin/time -f "cache $c: wall %e s" specjax generate --chat --prompt "What is speculative decoding?" 2>&1 | grep -E "wall|^mode"
  done
done

#!/usr/bin/env bash
# Wall seconds of the README's first command, an older tree (a git worktree) vs this one, alternating,
# three rounds after one warm-up run each (compile and cost caches warm); tokens/s beside.
#     git worktree add /tmp/wt_old REV && bash docs/experiments/kernel-rope/wall_ab.sh /tmp/wt_old
old=${1:?give an older tree (a git worktree) as the first argument}
new=$(cd "$(dirname "$0")/../../.." && pwd)
run() { (cd "$1" && PYTHONPATH="$1" python -m specjax.cli generate --chat --prompt "What is speculative decoding?" 2>&1 | grep -o "tokens/s=[0-9.]*"); }
run "$old" >/dev/null; run "$new" >/dev/null
for i in 1 2 3; do
  for t in "$old" "$new"; do
    s=$(date +%s.%N); tps=$(run "$t"); e=$(date +%s.%N)
    echo "$t wall $(echo "$e - $s" | bc) s $tps"
  done
done

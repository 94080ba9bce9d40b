#!/usr/bin/env bash
# The README's first command, alternating: this tree, an older tree (a git worktree at REV) and
# --mode incremental, three rounds; one summary line each.
#     git worktree add /tmp/wt_old REV && bash docs/experiments/spec-overhead/readme_ab.sh /tmp/wt_old
old=${1:?give an older tree (a git worktree) as the first argument}
new=$(cd "$(dirname "$0")/../../.." && pwd)
for i in 1 2 3; do
  (cd "$new" && PYTHONPATH="$new" python -m specjax.cli generate --chat --prompt "What is speculative decoding?" 2>&1 | grep "^mode=" | sed "s/^/new spec: /")
  (cd "$old" && PYTHONPATH="$old" python -m specjax.cli generate --chat --prompt "What is speculative decoding?" 2>&1 | grep "^mode=" | sed "s/^/old spec: /")
  (cd "$new" && PYTHONPATH="$new" python -m specjax.cli generate --chat --mode incremental --prompt "What is speculative decoding?" 2>&1 | grep "^mode=" | sed "s/^/new inc: /")
done

"""Held-out prompts for the probes: chat_prompts / context_tasks lines 5000+ (never trained on; the
prompts acceptance.json is measured on), interleaved, as token ids with the chat template."""
import json
from itertools import islice


def held_out_ids(tok, count: int) -> list[list[int]]:
    rows = []
    for name in ("chat_prompts.jsonl", "context_tasks.jsonl"):
        with open(f"/work/shared/data/boost_prompts/{name}") as f:
            rows.append([json.loads(l) for l in islice(f, 5000, 5000 + count)])
    rows = [r for pair in zip(*rows) for r in pair][:count]
    text = lambda r: (r["messages"][0]["content"] if "messages" in r
                      else r.get("prompt") or r.get("instruction") or json.dumps(r))
    return [tok.encode(text(r)[:3000], chat=True) for r in rows]

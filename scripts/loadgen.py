"""Load generator for `specjax serve`: N concurrent clients streaming chat completions on loopback.

    python scripts/loadgen.py --port 8000 --concurrency 8 --requests 32 --max-tokens 64

(--endpoint completions sends the prompts raw to /v1/completions: an instruct model may end at once.)

Each client sends its requests one after another (stream: true, greedy unless --temperature) until
--requests in all have been sent, or --time-limit seconds passed. Reports, over the requests:
output tokens/s (completion tokens of all requests / wall time), time to first token (request sent ->
first text chunk) and inter-token latency (per request: first to last text chunk over its tokens after
the first) as p50 / p90 / p99 over requests, and a JSON line with it all.
Only a loopback host is accepted (this is a benchmark, not a load test of someone else's server).
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import socket
import sys
import threading
import time

import numpy as np


def loopback(host: str) -> str:
    try:
        addrs = {ai[4][0] for ai in socket.getaddrinfo(host, None)}
    except socket.gaierror as e:
        raise SystemExit(f"--host {host}: {e}")
    if not all(ipaddress.ip_address(a).is_loopback for a in addrs):
        raise SystemExit(f"--host {host} is not a loopback address: loadgen drives a local server only")
    return host


def one_request(host, port, model, prompt, max_tokens, temperature, timeout, chat=True):
    """Streams one completion. Returns (ttft, [inter-token gaps], completion tokens, ok)."""
    body = {"model": model, "max_tokens": max_tokens, "temperature": temperature, "stream": True,
            "stream_options": {"include_usage": True}}
    body.update({"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt})
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions" if chat else "/v1/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        resp.read()
        conn.close()
        return None, [], 0, False
    ttft, first, last, tokens = None, None, None, 0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        choice = chunk["choices"][0] if chunk.get("choices") else {}
        text = (choice.get("delta", {}).get("content") if chat else choice.get("text")) or ""
        if not text:
            continue
        last = time.perf_counter()
        if ttft is None:
            first, ttft = last, last - t0
    # inter-token latency: the request's time from its first to its last text chunk over the tokens after
    # the first (chunks may carry several tokens: a speculative step, a longer loop call)
    gaps = [(last - first) / (tokens - 1)] if ttft is not None and tokens > 1 else []
    conn.close()
    return ttft, gaps, tokens, True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=None, help="model id (default: the server's first in /v1/models)")
    p.add_argument("--concurrency", type=int, default=8, help="clients at once (at most 256)")
    p.add_argument("--requests", type=int, default=32, help="requests in all (at most 4096)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--time-limit", type=float, default=600.0, help="stop sending after this many seconds")
    p.add_argument("--prompts", default=None, help="jsonl of {\"prompt\": str} (default: built-in questions)")
    args = p.parse_args(argv)
    host = loopback(args.host)
    if not 1 <= args.concurrency <= 256 or not 1 <= args.requests <= 4096:
        raise SystemExit("--concurrency must be in 1..256 and --requests in 1..4096")
    if args.prompts:
        with open(args.prompts) as f:
            prompts = [json.loads(l)["prompt"] for l in f if l.strip()]
    else:
        prompts = [f"Question {i}: explain in a few sentences why the sky is {c}." for i, c in
                   enumerate(["blue", "red at sunset", "dark at night", "grey when it rains"] * 4)]
    model = args.model
    if model is None:
        conn = http.client.HTTPConnection(host, args.port, timeout=10)
        conn.request("GET", "/v1/models")
        model = json.loads(conn.getresponse().read())["data"][0]["id"]
        conn.close()
    lock = threading.Lock()
    counter = iter(range(args.requests))
    results = []
    start = time.perf_counter()

    def client():
        while time.perf_counter() - start < args.time_limit:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            r = one_request(host, args.port, model, prompts[i % len(prompts)], args.max_tokens, args.temperature,
                            timeout=args.time_limit, chat=args.endpoint == "chat")
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = [r for r in results if r[3]]
    tokens = sum(r[2] for r in ok)
    ttft = np.asarray([r[0] for r in ok if r[0] is not None])
    itl = np.asarray([g for r in ok for g in r[1]])
    pct = lambda x: {f"p{q}": float(np.percentile(x, q)) if len(x) else None for q in (50, 90, 99)}
    report = dict(endpoint=args.endpoint, concurrency=args.concurrency, requests=len(results), failed=len(results) - len(ok),
                  max_tokens=args.max_tokens, completion_tokens=tokens, seconds=wall, tokens_per_s=tokens / wall,
                  ttft_s=pct(ttft), itl_s=pct(itl))
    f = lambda d: " ".join(f"{k}={v * 1000:.0f}ms" for k, v in d.items() if v is not None)
    print(f"concurrency={args.concurrency} requests={len(results)} failed={report['failed']} "
          f"tokens={tokens} in {wall:.1f}s: {tokens / wall:.1f} tokens/s; TTFT {f(report['ttft_s'])}; "
          f"inter-token {f(report['itl_s'])}", file=sys.stderr)
    print(json.dumps(report))
    return 0 if not report["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""How long `specjax serve` takes to answer /health, to stream a first token to a request sent at once,
and to finish compiling its row tiers while idle (--precompile idle, the default), on the embedded model.

    python scripts/measure_serve_startup.py [--port 8765] [-- extra serve args, e.g. --precompile startup]

Starts the server, times from launch; the server's stderr goes to serve_startup.err. Loopback only.
"""
import json
import subprocess
import sys
import time
import urllib.request


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 8765
    t0 = time.time()
    proc = subprocess.Popen(["specjax", "serve", "--port", str(port), *extra], stdout=subprocess.DEVNULL,
                            stderr=open("serve_startup.err", "w"))

    def health():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            return json.loads(r.read())

    try:
        while True:
            if proc.poll() is not None:
                print(f"error: the server exited with {proc.returncode} (see serve_startup.err)", file=sys.stderr)
                return 2
            try:
                h = health()
                break
            except OSError:
                time.sleep(0.2)
        ready = time.time() - t0
        print(f"/health answers {ready:.1f} s after launch: {h}", flush=True)
        body = json.dumps({"model": "specjax-default", "prompt": "Once upon a time", "max_tokens": 32,
                           "temperature": 0, "stream": True}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        t1, ttft = time.time(), None
        with urllib.request.urlopen(req, timeout=600) as r:
            for line in r:
                if line.startswith(b"data: {") and ttft is None and json.loads(line[6:])["choices"][0]["text"]:
                    ttft = time.time() - t1
        print(f"a greedy streamed request sent then: first token after {ttft:.1f} s, done after {time.time() - t1:.1f} s",
              flush=True)
        while (p := health().get("precompile", {})).get("pending"):
            time.sleep(1)
        print(f"nothing left to compile {time.time() - t0:.1f} s after launch: {p}", flush=True)
        return 0
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    sys.exit(main())

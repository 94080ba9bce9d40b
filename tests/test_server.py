"""`specjax serve` in a subprocess on a free loopback port, a tiny random model, spoken to with the
official openai client: completions and chat, streamed and not, equal to Generator's greedy output;
32 concurrent requests through 4 rows; bad input -> OpenAI error JSON, status 400, and the server
goes on; a client that disconnects mid-stream frees its row; the row tiers compile while the server
is idle (--precompile idle, the default: it listens at once); SIGTERM / SIGINT shut it down cleanly."""

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--drafters", "recycle,lookup", "--budget", "6", "--max-len", "96"]  # spec mode, no autotune
PROMPTS = ["w5 w6 w7", "w40 w41", "w9 w8 w7 w6 w5 w4 w3 w2 w1 w10 w11"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model_dir, *extra):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "specjax.cli", "serve", "--llm", str(model_dir), "--port", str(port),
                             "--model-name", "tiny", *FLAGS, *extra], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
        try:
            get(port, "/health")
            return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


def post(port, path, data: bytes):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def model_dir(converted):
    return converted["llama_gqa_llama3"]  # word-level tokenizer with a chat template


@pytest.fixture(scope="module")
def server(model_dir):
    proc, port = start(model_dir, "--batch-size", "4", "--steps-per-call", "1")
    yield proc, port
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server[1]}/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def gen(model_dir):
    from specjax.api import Generator

    return Generator.load(llm=str(model_dir), drafters="recycle,lookup", budget=6, max_len=96)


def test_greedy_completions_and_chat_equal_the_generator(client, gen):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    ref = gen.generate(PROMPTS, max_new_tokens=12, batching="static")
    assert [r["text"] for r in gen.generate(PROMPTS, max_new_tokens=12)] == [r["text"] for r in ref]
    for p, r in zip(PROMPTS, ref):
        out = client.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0)
        assert out.choices[0].text == r["text"]
        assert out.usage.completion_tokens == len(r["token_ids"]) and out.usage.prompt_tokens == len(r["prompt_ids"])
        assert out.choices[0].finish_reason == ("length" if r["finish_reason"] == "max_new_tokens" else "stop")
        extra = out.model_extra["specjax"]  # MAT depends on the recycling table's history: its own figures
        assert extra["mean_accepted"] == pytest.approx(len(r["token_ids"]) / extra["llm_steps"]) and extra["llm_steps"] >= 1
        pieces = [c.choices[0].text for c in client.completions.create(model="tiny", prompt=p, max_tokens=12,
                                                                       temperature=0, stream=True)]
        assert len([x for x in pieces if x]) > 1 and "".join(pieces) == r["text"]
    [chat_ref] = gen.generate([PROMPTS[0]], chat=True, max_new_tokens=10)
    msgs = [{"role": "user", "content": PROMPTS[0]}]
    chat = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0)
    assert chat.choices[0].message.content == chat_ref["text"] and chat.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat_ref["text"]
    assert chunks[-1].usage.completion_tokens == len(chat_ref["token_ids"])


def test_stop_and_sampling(client, gen):
    [r] = gen.generate([PROMPTS[2]], max_new_tokens=12)
    words = r["text"].split(" ")
    stop = " ".join(words[3:5])
    out = client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=12, temperature=0, stop=[stop])
    assert out.choices[0].text == r["text"][: r["text"].index(stop)] and out.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt=PROMPTS[2], max_tokens=12, temperature=0, stop=stop, stream=True))
    assert streamed == out.choices[0].text
    s = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=8, temperature=0.8, top_p=0.9, seed=3)
    assert s.usage.completion_tokens >= 1 and s.choices[0].text.startswith("w")


def test_32_concurrent_requests_equal_their_greedy_output_alone(client, gen):
    prompts = [" ".join(f"w{(7 * i + j) % 90 + 4}" for j in range(1 + i % 9)) for i in range(32)]
    limits = [3 + (5 * i) % 17 for i in range(32)]
    ids = [gen.encode_row({"prompt": p}, False) for p in prompts]
    alone = [gen.generate_ids([x], max_new_tokens=n)[0] for x, n in zip(ids, limits)]

    def ask(i):
        return client.completions.create(model="tiny", prompt=prompts[i], max_tokens=limits[i], temperature=0)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        outs = list(pool.map(ask, range(32)))
    for o, a in zip(outs, alone):
        assert o.choices[0].text == gen.llm.tokenizer.decode(a.token_ids)


@pytest.mark.parametrize("body,param", [
    (b'{"model": "tiny", "prompt": "w5", ', None),
    (b'{"model": "gpt-4", "prompt": "w5"}', "model"),
    (b'{"model": "tiny", "prompt": "w5", "max_tokens": 500}', "max_tokens"),
    (b'{"model": "tiny", "prompt": ""}', "prompt"),
    (b'{"model": "tiny", "prompt": "w5", "n": 2}', "n"),
    (b'{"model": "tiny", "prompt": "w5", "seed": 18446744073709551616}', "seed"),  # 2**64: beyond a key
    (b'{"model": "tiny", "messages": []}', "messages"),
])
def test_bad_input_is_a_400_and_the_server_goes_on(server, client, body, param):
    port = server[1]
    path = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
    status, err = post(port, path, body)
    assert status == 400 and err["error"]["type"] == "invalid_request_error" and err["error"]["param"] == param
    assert err["error"]["message"]
    ok = client.completions.create(model="tiny", prompt="w5 w6", max_tokens=3, temperature=0)
    assert ok.usage.completion_tokens >= 1


def test_openai_client_sees_the_errors(client):
    with pytest.raises(openai.BadRequestError, match="unknown model"):
        client.completions.create(model="nope", prompt="w5", max_tokens=3)
    with pytest.raises(openai.BadRequestError, match="cache slots"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "w5"}], max_tokens=1000)


def test_a_client_that_disconnects_frees_its_row(server, client):
    port = server[1]
    before = get(port, "/health")["cancelled"]
    stream = client.completions.create(model="tiny", prompt="w5 w6", max_tokens=80, temperature=0, stream=True)
    next(iter(stream))  # one chunk, then hang up (one step per return to the host: far from done)
    stream.close()
    deadline = time.time() + 20
    while time.time() < deadline:
        h = get(port, "/health")
        if h["cancelled"] > before and h["active"] == 0:
            break
        time.sleep(0.05)
    assert h["cancelled"] == before + 1 and h["active"] == 0 and h["waiting"] == 0
    assert client.completions.create(model="tiny", prompt="w5", max_tokens=2, temperature=0).usage.completion_tokens


def test_sigterm_and_sigint_shut_down_cleanly(server, model_dir):
    proc, port = server
    deadline = time.time() + 120  # the row tiers compile between the tests' requests, while it is idle
    while (h := get(port, "/health")["precompile"])["pending"] and time.time() < deadline:
        time.sleep(0.2)
    assert h["mode"] == "idle" and h["pending"] == 0 and h["compiled"] > 0, h
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    err = proc.stderr.read()
    assert "engine stopped" in err and "to compile while idle" in err and "executables while idle" in err
    proc2, port2 = start(model_dir, "--precompile", "startup", "--batch-size", "1")  # one tier: a few compiles
    assert get(port2, "/health")["precompile"] == {"mode": "startup", "compiled": 5, "pending": 0}
    proc2.send_signal(signal.SIGINT)
    assert proc2.wait(timeout=30) == 0
    err = proc2.stderr.read()
    assert "engine stopped" in err and "compiled 5 executables in" in err  # before it listened

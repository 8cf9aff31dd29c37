"""`python -m gpt2_jax.serve` over a tiny random-init checkpoint, on loopback: the real openai
client, concurrent requests batched into the engine's slots (each answer equal to the same
request sent alone), each kind of bad input, a client gone mid-stream, and SIGTERM draining."""

import concurrent.futures
import json
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from gpt2_jax.training.checkpoint import save_params  # noqa: E402
from gpt2_jax.config import load_config, model_config  # noqa: E402
from gpt2_jax.model import GPT, init_params  # noqa: E402

from helpers import TINY, process_env  # noqa: E402

MAX_BATCH = 8
CONTEXT = 64


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A params-only checkpoint of a randomly initialised tiny GPT-2, as `hf import` writes."""
    path = tmp_path_factory.mktemp("served")
    c = load_config(None, [*TINY, f"--config.model.block_size={CONTEXT}"])
    params = init_params(GPT(model_config(c, devices=1, tensor=1)), jax.random.key(0))
    save_params(path / "checkpoints", 0, params, c)
    return path


def start_server(workdir, *extra):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = process_env()
    process = subprocess.Popen(
        [sys.executable, "-m", "gpt2_jax.serve", "--workdir", str(workdir), "--port", str(port),
         "--max_batch", str(MAX_BATCH), "--chunk_steps", "4", "--max_n", "4", "--model", "tiny",
         *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.stdout.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    raise AssertionError("the server did not come up in 180 s")


@pytest.fixture(scope="module")
def server(workdir):
    process, url = start_server(workdir)
    yield url
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def complete(url, **body):
    response = httpx.post(f"{url}/v1/completions", json={"model": "tiny", **body}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
def test_the_openai_client_completes_streams_and_stops(server):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", timeout=120)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    whole = client.completions.create(model="tiny", prompt="Once upon a", max_tokens=12,
                                      temperature=0)
    text = whole.choices[0].text
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 12
    streamed = list(client.completions.create(model="tiny", prompt="Once upon a", max_tokens=12,
                                              temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == text
    assert streamed[-1].choices[0].finish_reason == "length"
    stop = text[len(text) // 2:][:3]
    stopped = client.completions.create(model="tiny", prompt="Once upon a", max_tokens=12,
                                        temperature=0, stop=[stop])
    assert stopped.choices[0].text == text[:text.find(stop)]
    assert stopped.choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_concurrent_requests_each_equal_the_same_request_alone(server):
    bodies = [{"prompt": prompt, "max_tokens": 10, "temperature": 1.0, "top_k": 40, "seed": seed}
              for prompt in ("The", "A long time ago in a galaxy") for seed in range(4)]
    alone = [complete(server, **body)["choices"][0]["text"] for body in bodies]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda i: complete(server, **bodies[i % 8]), range(32)))
    for i, answer in enumerate(answers):
        assert answer["choices"][0]["text"] == alone[i % 8]
        assert answer["choices"][0]["finish_reason"] == "length"
    # n choices are seeded seed, seed + 1, ...: choice 1 of seed 0 is seed 1 alone.
    two = complete(server, **{**bodies[0], "n": 2})["choices"]
    assert [c["text"] for c in two] == alone[:2]


@pytest.mark.parametrize("body, status, param", [
    ({"prompt": "hi", "max_tokens": "5"}, 400, "max_tokens"),
    ({"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ({"prompt": 5}, 400, "prompt"),
    ({"prompt": "hi", "max_tokens": -3}, 400, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 10**9}, 400, "max_tokens"),
    ({"prompt": "hi " * CONTEXT}, 400, "prompt"),
    ({"prompt": "hi", "model": "gpt-5"}, 404, "model"),
    ({"prompt": "hi", "n": 5}, 400, "n"),
    ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
])
def test_bad_input_is_a_4xx_naming_the_field_and_the_server_serves_on(server, body, status,
                                                                      param):
    response = httpx.post(f"{server}/v1/completions", json={"model": "tiny", **body}, timeout=60)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert param in response.json()["error"]["message"]
    assert complete(server, prompt="still here", max_tokens=2)["choices"][0]["text"] is not None


def test_malformed_json_is_a_400(server):
    response = httpx.post(f"{server}/v1/completions", content=b'{"prompt": "hi",',
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_a_client_gone_mid_stream_frees_its_slot(server):
    cancelled = httpx.get(f"{server}/health").json()["finished"].get("cancelled", 0)
    with httpx.stream("POST", f"{server}/v1/completions", timeout=60, json={
            "model": "tiny", "prompt": "x", "max_tokens": CONTEXT - 2, "stream": True}) as r:
        next(r.iter_lines())  # the first event, then the connection is closed
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        health = httpx.get(f"{server}/health").json()
        if health["finished"].get("cancelled", 0) > cancelled and health["busy"] == 0:
            break
        time.sleep(0.1)
    assert health["finished"].get("cancelled", 0) == cancelled + 1 and health["busy"] == 0
    with concurrent.futures.ThreadPoolExecutor(MAX_BATCH) as pool:
        answers = list(pool.map(lambda _: complete(server, prompt="y", max_tokens=8),
                                range(MAX_BATCH)))
    assert all(a["usage"]["completion_tokens"] >= 1 for a in answers)


@pytest.mark.slow
def test_sigterm_drains_the_requests_in_flight_and_exits_0(workdir):
    process, url = start_server(workdir)
    try:
        complete(url, prompt="warm", max_tokens=4)  # compiled before the signal
        with httpx.stream("POST", f"{url}/v1/completions", timeout=120, json={
                "model": "tiny", "prompt": "z", "max_tokens": 40, "temperature": 0,
                "stream": True}) as r:
            lines = r.iter_lines()
            first = next(lines)
            process.send_signal(signal.SIGTERM)
            events = [first, *lines]
        data = [line.removeprefix("data: ") for line in events if line.startswith("data: ")]
        assert data[-1] == "[DONE]"
        assert json.loads(data[-2])["choices"][0]["finish_reason"] == "length"
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()

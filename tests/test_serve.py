"""rnnkit serve: the API against a real uvicorn in a subprocess, read with httpx; every stream bounded in time."""

import json
import math
import signal
import time

import httpx
import pytest
import torch

from rnnkit.cli import main

TIMEOUT = httpx.Timeout(20.0)


@pytest.fixture(scope="module")
def runs(served_runs):
    return served_runs


@pytest.fixture(scope="module")
def server(live_server):
    with httpx.Client(base_url=live_server, timeout=TIMEOUT) as client:
        yield client


def read_events(response: httpx.Response) -> list[tuple[str, dict]]:
    """Parse a server-sent event stream into (event, data) pairs."""
    events, name, data = [], "message", []
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif line == "" and data:
            events.append((name, json.loads("\n".join(data))))
            name, data = "message", []
    return events


def stream(client, **params) -> list[tuple[str, dict]]:
    with client.stream("GET", "/api/generate", params=params) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return read_events(response)


def cli_output(capsys, args) -> str:
    capsys.readouterr()
    assert main(args) == 0
    return capsys.readouterr().out


def test_runs_lists_each_run_with_its_model_and_validation(server, runs):
    listed = {r["name"]: r for r in server.get("/api/runs").json()}
    assert set(listed) == {"book", "lstm"}
    book, lstm = listed["book"], listed["lstm"]
    config = json.loads((runs["book"] / "config.json").read_text())
    assert book["model"] == "rnn" and book["hidden"] == 16
    assert book["parameters"] == 28 * 16 + 16 * 16 + 2 * 16 + 16 * 28 + 28  # W_xh, W_hh, two biases, head
    assert book["checkpoint"] == "best" and book["vocab"] == config["vocab"]["idx_to_token"]
    assert book["val_ppl"] == pytest.approx(math.exp(config["best"]["val_loss"]))
    assert book["val_bpc"] == pytest.approx(config["best"]["val_loss"] / math.log(2))
    assert lstm["model"] == "lstm" and lstm["layers"] == 2 and lstm["unk_token"] is None


@pytest.mark.parametrize(
    "run,settings",
    [
        ("book", {"temperature": "0.8", "top_k": "5", "seed": "7"}),
        ("lstm", {"top_p": "0.9", "alpha": "1.5", "seed": "3"}),
    ],
)
def test_generate_with_a_seed_streams_what_rnnkit_generate_prints(server, runs, capsys, run, settings):
    events = stream(server, run=run, prefix="the time", n=60, **settings)
    names = [e for e, _ in events]
    assert names[0] == "start" and names[-1] == "done" and names[1:-1] == ["message"] * 60
    chars = [data for event, data in events if event == "message"]
    for c in chars:
        probs = [p for _, p in c["top"]]
        assert len(c["top"]) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert 0 < c["p"] <= 1 and (c["char"] not in dict(c["top"]) or dict(c["top"])[c["char"]] == c["p"])
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    printed = cli_output(capsys, ["generate", str(runs[run]), "--prefix", "the time", "-n", "60", *flags])
    assert events[0][1]["prefix"] + "".join(c["char"] for c in chars) == printed.rstrip("\n")
    assert events[-1][1]["chars"] == 60


def test_greedy_stream_takes_the_top_alternative_each_time(server):
    events = stream(server, run="book", prefix="time traveller", n=30, greedy="true")
    for event, data in events:
        if event == "message":
            assert data["char"] == data["top"][0][0]


def test_score_equals_rnnkit_eval_and_reports_each_character(server, runs, capsys, tmp_path, tm_text):
    text = tm_text[5000:6500]
    path = tmp_path / "piece.txt"
    path.write_text(text)
    for run in ("book", "lstm"):
        evaluated = json.loads(cli_output(capsys, ["eval", str(runs[run]), "--corpus", str(path), "--json"]))
        scored = server.post("/api/score", json={"run": run, "text": text}).json()
        assert scored["tokens"] == evaluated["tokens"] == len(scored["chars"]) - 1
        assert scored["ppl"] == pytest.approx(evaluated["ppl"], rel=1e-9)
        assert scored["bpc"] == pytest.approx(evaluated["bpc"], rel=1e-9)
        chars = scored["chars"]
        assert chars[0]["logp"] is None and "".join(c["char"] for c in chars) == scored["text"]
        # per-character surprisal adds up to the total (computed independently: a full forward pass)
        assert sum(c["bits"] for c in chars[1:]) / scored["tokens"] == pytest.approx(scored["bpc"], rel=1e-4)
        for c in chars[1:]:
            assert c["bits"] == pytest.approx(-c["logp"] / math.log(2), abs=1e-5)
            assert (c["rank"] == 1) == (c["char"] == c["top"][0][0]) or c["top"][0][1] == c["top"][1][1]
            if c["rank"] <= 5:
                assert dict(c["top"])[c["char"]] == pytest.approx(math.exp(c["logp"]), abs=2e-6)


def test_activations_are_the_models_hidden_states(server, runs):
    from rnnkit.checkpoint import load_run
    from rnnkit.models import evaluating

    text = 'He said, "the time machine," and laughed.'
    model, vocab, _, _ = load_run(runs["lstm"], checkpoint="best")
    ids = torch.tensor(vocab[list(text)])
    with evaluating(model):
        outputs, _ = model.hidden(ids.view(1, -1))
    last = server.post("/api/activations", json={"run": "lstm", "text": text}).json()
    assert last["layer"] == 1 and last["layers"] == 2 and last["units"] == 12 and last["chars"] == list(text)
    h = torch.tensor(last["h"], dtype=torch.float64)
    assert h.shape == (len(text), 12) and torch.allclose(h, outputs[:, 0].double(), atol=1e-4)
    assert torch.tensor(last["c"]).shape == (len(text), 12)
    first = server.post("/api/activations", json={"run": "lstm", "text": text, "layer": 0}).json()
    assert first["layer"] == 0 and not torch.allclose(torch.tensor(first["h"], dtype=torch.float64), h)
    stats = last["stats"]
    assert [s["unit"] for s in stats] == list(range(12))
    assert stats[3]["mean"] == pytest.approx(float(outputs[:, 0, 3].mean()), abs=1e-4)
    assert stats[3]["max"] == pytest.approx(float(outputs[:, 0, 3].max()), abs=1e-4)
    book = server.post("/api/activations", json={"run": "book", "text": "time"}).json()
    assert book["c"] is None and torch.tensor(book["h"]).shape == (4, 16)


BAD_REQUESTS = [
    ("GET", "/api/generate", {"run": "nope"}, 404, "unknown run"),
    ("GET", "/api/generate", {"run": "book", "n": "401"}, 413, "limit"),
    ("GET", "/api/generate", {"run": "book", "n": "-1"}, 422, "n"),
    ("GET", "/api/generate", {"run": "book", "n": "lots"}, 422, "n"),
    ("GET", "/api/generate", {"run": "book", "temperature": "abc"}, 422, "temperature"),
    ("GET", "/api/generate", {"run": "book", "temperature": "1e-310"}, 422, "temperature"),
    ("GET", "/api/generate", {"run": "book", "temperature": "nan"}, 422, "temperature"),
    ("GET", "/api/generate", {"run": "book", "top_p": "0"}, 422, "top_p"),
    ("GET", "/api/generate", {"run": "book", "top_k": "-2"}, 422, "top_k"),
    ("GET", "/api/generate", {"run": "book", "seed": "-1"}, 422, "seed"),
    ("GET", "/api/generate", {"run": "book", "seed": "1e20"}, 422, "seed"),
    ("GET", "/api/generate", {"run": "book", "seed": str(1 << 70)}, 422, "seed"),
    ("GET", "/api/generate", {"run": "lstm", "prefix": "naïve ☃"}, 422, "cannot read"),
    ("GET", "/api/generate", {"run": "book", "prefix": "x" * 3001}, 413, "at most"),
    ("GET", "/api/generate", {}, 422, "run"),
    ("POST", "/api/score", {"run": "nope", "text": "abc"}, 404, "unknown run"),
    ("POST", "/api/score", {"run": "book", "text": "a"}, 422, "at least 2"),
    ("POST", "/api/score", {"run": "book"}, 422, "text"),
    ("POST", "/api/score", {"run": "book", "text": 5}, 422, "text"),
    ("POST", "/api/score", {"run": "book", "text": "abc", "extra": 1}, 422, "extra"),
    ("POST", "/api/score", {"run": "lstm", "text": "Größe"}, 422, "cannot read"),
    ("POST", "/api/score", {"run": "book", "text": "a" * 3001}, 413, "at most"),
    ("POST", "/api/score", ["not", "an", "object"], 422, ""),
    ("POST", "/api/activations", {"run": "lstm", "text": "abc", "layer": 2}, 422, "layer"),
    ("POST", "/api/activations", {"run": "lstm", "text": "abc", "layer": -1}, 422, "layer"),
    ("POST", "/api/activations", {"run": "lstm", "text": ""}, 422, "empty"),
    ("POST", "/api/activations", {"run": "book", "text": "abc", "layer": "top"}, 422, "layer"),
]


@pytest.mark.parametrize("method,path,payload,status,words", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_with_a_json_error(server, method, path, payload, status, words):
    if method == "GET":
        response = server.get(path, params=payload)
    else:
        response = server.post(path, json=payload)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert words in response.json()["error"]


def test_malformed_and_oversized_bodies_and_unknown_paths(server):
    malformed = server.post(
        "/api/score", content=b'{"run": "book", "text": ', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 422 and "error" in malformed.json()
    huge = server.post(
        "/api/score",
        content=json.dumps({"run": "book", "text": "a" * 30000}).encode(),
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413 and "at most 20000" in huge.json()["error"]
    chunked = server.post(
        "/api/score",
        content=iter([b'{"run": "book", ', b'"text": "abc"}']),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 411 and "Content-Length" in chunked.json()["error"]
    for path in (
        "/nothing",
        "/../pyproject.toml",
        "/docs-assets/../../serve.py",
        "/static/app.js",
        "/%2e%2e/config.json",
    ):
        response = server.get(path)
        assert response.status_code == 404, path
        assert "error" in response.json()
    assert server.get("/api/score").status_code == 405


def test_page_and_api_docs_load_only_from_the_server(server):
    page = server.get("/")
    assert page.status_code == 200 and page.headers["content-security-policy"] == "default-src 'self'"
    assert "http" not in page.text.replace("http-equiv", "")  # no external URL in the page
    for asset in ("/app.js", "/style.css"):
        response = server.get(asset)
        assert response.status_code == 200 and "http://" not in response.text and "https://" not in response.text
    docs = server.get("/docs")
    assert docs.status_code == 200 and "default-src 'self'" in docs.headers["content-security-policy"]
    assert "https://" not in docs.text and server.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    schema = server.get("/openapi.json").json()
    assert {"/api/runs", "/api/generate", "/api/score", "/api/activations"} <= set(schema["paths"])
    assert "ErrorBody" in str(schema["paths"]["/api/score"]["post"]["responses"]["404"])  # the error shape served
    head = server.head("/")
    assert head.status_code == 200 and head.headers["content-security-policy"] == "default-src 'self'"


def test_openapi_describes_every_request_and_response_body(server):
    schema = server.get("/openapi.json").json()
    components = schema["components"]["schemas"]

    def body(operation, status="200"):
        return operation["responses"][status]["content"]["application/json"]["schema"]

    runs, score, activations = (
        schema["paths"][path][method]
        for path, method in (("/api/runs", "get"), ("/api/score", "post"), ("/api/activations", "post"))
    )
    assert body(runs) == {**body(runs), "type": "array", "items": {"$ref": "#/components/schemas/RunInfo"}}
    assert body(score) == {"$ref": "#/components/schemas/ScoreResult"}
    assert body(activations) == {"$ref": "#/components/schemas/ActivationsResult"}
    assert {"val_bpc", "vocab", "checkpoint"} <= set(components["RunInfo"]["properties"])
    assert {"ppl", "bpc", "tokens", "chars"} <= set(components["ScoreResult"]["required"])
    assert {"h", "c", "stats"} <= set(components["ActivationsResult"]["required"])
    assert score["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TextRequest"}
    events = schema["paths"]["/api/generate"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    kinds = events["itemSchema"]["properties"]["data"]["contentSchema"]["oneOf"]
    assert [kind["title"] for kind in kinds] == ["StartEvent", "CharEvent", "DoneEvent", "ErrorBody"]
    for operation in (score, activations):
        assert body(operation, "404") == {"$ref": "#/components/schemas/ErrorBody"}


def test_the_package_imports_without_fastapi():
    # the CLI reads rnnkit.serve.Limits at every start; FastAPI is an extra, loaded by the serving pieces
    import subprocess
    import sys

    code = (
        "import sys, rnnkit.serve as s; assert 'fastapi' not in sys.modules, 'fastapi imported'; "
        "s.create_app; assert 'fastapi' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def open_stream_and_leave(client, deadline: float) -> int:
    """Open a long stream, read its first event and go away; retries while all slots are taken.
    Returns how many 429s it met first."""
    refused = 0
    while True:
        with client.stream("GET", "/api/generate", params={"run": "lstm", "n": "400"}) as response:
            if response.status_code == 200:
                next(response.iter_lines())
                return refused
            assert response.status_code == 429
        refused += 1
        assert time.monotonic() < deadline, "a stream whose client left kept its slot"
        time.sleep(0.02)


def test_a_stream_whose_client_leaves_frees_its_slot(server):
    # max_streams is 3: twelve clients in a row each leave a 400-character stream after its first event
    deadline = time.monotonic() + 10
    for _ in range(12):
        open_stream_and_leave(server, deadline)
    events = stream(server, run="book", n=5)  # every slot comes back
    assert events[-1][0] == "done"


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_concurrent_streams_beyond_the_limit_are_refused_with_429(runs):
    from fastapi.testclient import TestClient

    import rnnkit.serve as serve

    runs = serve.load_runs([str(runs["book"])])
    model, produced = runs["book"].model, []
    forward = model.forward

    def slow_forward(*args, **kwargs):  # about 100 characters a second per round of streams
        time.sleep(0.01)
        produced.append(1)
        return forward(*args, **kwargs)

    model.forward = slow_forward
    app = serve.create_app(runs, serve.Limits(max_streams=2))
    with TestClient(app) as client:
        with (
            client.stream("GET", "/api/generate", params={"run": "book", "n": "100"}) as first,
            client.stream("GET", "/api/generate", params={"run": "book", "n": "100"}) as second,
        ):
            assert first.status_code == second.status_code == 200
            third = client.get("/api/generate", params={"run": "book", "n": "3"})
            assert third.status_code == 429 and "limit" in third.json()["error"]
        # both clients left early: generation stopped (unstopped, the 100 rounds would take about 1 s) and
        # the slots are free again
        time.sleep(1.5)
        assert len(produced) < 50
        assert client.get("/api/generate", params={"run": "book", "n": "3"}).status_code == 200


def test_a_run_being_saved_meanwhile_loads_consistently(runs, tmp_path, monkeypatch):
    import shutil

    import rnnkit.checkpoint as checkpoint
    import rnnkit.serve as serve
    from rnnkit.errors import RnnkitError

    run_dir = tmp_path / "book"
    shutil.copytree(runs["book"], run_dir)
    real = checkpoint.load_run
    calls = []

    def save_lands_meanwhile(path, *args, **kwargs):
        # the first load reads config.json, then a training process commits a new checkpoint and
        # removes the old files before the weights are read
        calls.append(1)
        if len(calls) == 1:
            model, vocab, config, meta = real(path, *args, **kwargs)
            checkpoint.save_run(path, model, vocab, config, meta["epoch"] + 1)
            raise RnnkitError(f"{path}/model-{meta['checkpoint']}.safetensors: missing")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "load_run", save_lands_meanwhile)
    run = serve.load_served_run(run_dir, None, "book")
    assert len(calls) == 2
    assert (
        run.info["checkpoint_id"]
        == checkpoint.read_config(run_dir)["checkpoint"]
        != checkpoint.read_config(runs["book"])["checkpoint"]
    )
    assert run.checkpoint == "last"  # the new save kept no best weights: the loader follows what is there


def test_serve_refuses_bad_setup_with_one_line(runs, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["serve", str(runs["book"]), "--max-streams", "0"]) == 2
    assert "--max-streams" in capsys.readouterr().err
    assert main(["serve", str(runs["book"]), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["serve", str(runs["book"]), "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", str(runs["book"]), "--port", str(port)]) == 2
        assert "cannot listen" in capsys.readouterr().err


def test_server_binds_loopback_by_default(runs, start_server):
    process, address = start_server([runs["book"]], "--max-streams=2")
    try:
        assert address.startswith("127.0.0.1:")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)

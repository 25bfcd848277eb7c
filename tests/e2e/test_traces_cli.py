"""`llmitm traces` on the store a real gateway wrote: the quickstart config (the `mock`
provider, payloads logged), called with the openai SDK, then the CLI as a user runs
it, in a subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai

from tests.conftest import REPO
from tests.e2e.test_gateway_process import quickstart


def llmitm() -> list[str]:
    found = shutil.which("llmitm", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "addons.cli"]


def traces(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*llmitm(), "traces", "--store", str(store), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def calls(gw: Any) -> None:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "hello traces"}]
    )
    chunks = list(
        client.chat.completions.create(
            model="mock-gpt",
            messages=[{"role": "user", "content": "stream three words"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None
    client.embeddings.create(model="mock-embedding", input=["a", "b"])


def test_traces_on_a_store_a_gateway_wrote(start_gateway, tmp_path: Path) -> None:
    gw = start_gateway(quickstart(tmp_path))
    calls(gw)
    gw.wait_records(3)
    gw.stop()  # the store is flushed at shutdown
    store = gw.store_path
    assert store.exists()

    listed = traces(store)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:6] == ["time", "id", "route", "consumer", "provider/model", "status"]
    rows = [line for line in lines[1:] if line[:4].isdigit()]
    assert len(rows) == 3
    assert [r.split()[3] for r in rows] == ["chat", "chat", "embeddings"]  # oldest first
    assert [r.split()[5] for r in rows] == ["mock/mock-gpt", "mock/mock-gpt", "mock/mock-embedding"]
    assert all(" ok " in r for r in rows)
    assert rows[1].split()[-2:] != ["-", "-"] and rows[1].endswith(" ms")  # TTFT of the stream
    assert "$" in rows[0]  # the quickstart's mock model has a price

    as_json = traces(store, "--json")
    data = json.loads(as_json.stdout)
    assert [r["route"] for r in data] == ["embeddings", "chat", "chat"]  # newest first
    streamed = data[1]
    assert streamed["stream"] is True and streamed["ttft_ms"] is not None
    assert streamed["completion_tokens"] > 0 and streamed["cost"] > 0

    only = json.loads(traces(store, "--json", "--model", "mock-embedding", "--since", "1h").stdout)
    assert [r["route"] for r in only] == ["embeddings"]
    assert json.loads(traces(store, "--json", "--until", "1h").stdout) == []

    totals = traces(store, "totals", "--by", "route", "--json")
    assert totals.returncode == 0
    by_route = {t["key"]: t for t in json.loads(totals.stdout)}
    assert {k: t["calls"] for k, t in by_route.items()} == {"chat": 2, "embeddings": 1}
    assert by_route["chat"]["errors"] == 0 and by_route["chat"]["cost"] > 0
    text = traces(store, "totals")
    assert "mock-gpt" in text.stdout and "total" in text.stdout

    # one call in full, by the id prefix the table shows
    prefix = rows[1].split()[2]
    shown = traces(store, "show", prefix)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"call {streamed['id']}")
    assert "[user]\nstream three words" in shown.stdout
    assert "[assistant]\nstream three words" in shown.stdout
    assert re.search(r"^mode +stream$", shown.stdout, re.M)
    full = json.loads(traces(store, "show", streamed["id"], "--json").stdout)
    assert full["ai"]["proxy"]["payload"]["request"]["messages"] == [
        {"role": "user", "content": "stream three words"}
    ]

    missing = traces(tmp_path / "none.db")
    assert missing.returncode == 1 and "run the gateway" in missing.stderr


def test_follow_while_the_gateway_runs(start_gateway, tmp_path: Path) -> None:
    gw = start_gateway(quickstart(tmp_path))
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    client.embeddings.create(model="mock-embedding", input=["first"])
    deadline = time.time() + 10
    while not gw.store_path.exists():  # the store is created with the first record
        assert time.time() < deadline, gw.log()
        time.sleep(0.05)
    time.sleep(0.5)
    proc = subprocess.Popen(
        [*llmitm(), "traces", "--store", str(gw.store_path), "--follow", "--json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    fd = proc.stdout.fileno()  # type: ignore[union-attr]
    os.set_blocking(fd, False)
    out = b""

    def lines() -> list[dict[str, Any]]:
        nonlocal out
        try:
            while chunk := os.read(fd, 65536):
                out += chunk
        except BlockingIOError:
            pass
        text = out.decode()
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]

    try:
        deadline = time.time() + 10
        while not lines():  # the backlog: the first call
            assert time.time() < deadline and proc.poll() is None, proc.stderr
            time.sleep(0.05)
        client.chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "followed"}]
        )
        deadline = time.time() + 10
        while len(lines()) < 2:
            assert time.time() < deadline, out
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(10)
    got = lines()
    assert code == 0
    assert [r["route"] for r in got] == ["embeddings", "chat"]
    assert got[1]["model"] == "mock-gpt" and got[1]["status"] == "ok"

"""Engine benchmark: the neuron's batched engine vs llama.cpp's own llama-server (and,
optionally, the neuron of an earlier commit), same GGUF, threads, context and greedy sampling.

Not a test. Run from the repository root on an otherwise idle machine:

    ../shared/tools/build-llama-server.sh            # once; prints .bench/llama-server/llama-server
    .venv/bin/python bench/engine.py [--old-commit 2727804] [--threads 2] [--models smollm2,gemma]

Scenarios, each through the server's HTTP API (streaming /v1/completions):
1. single stream: decode tok/s of one 128-token greedy completion (median of 3);
2. four streams at once: aggregate completion tok/s (median of 3 rounds);
3. two conversations sharing a ~2k-token system prompt, interleaved over 6 turns each:
   median time to first token;
4. a short request arriving while 3 long ones generate: its time to first token (median of 5,
   from 1 s after the long ones began), vs alone (median of 5). A pause of 50–150 ms (seeded)
   comes before each one, so that it arrives at a random point of the decode step in flight,
   as a request from another user would; sent back to back, each would arrive just after a step
   began and wait for all of it.
5. (run after 3) more developers than the neuron has sequences: ten distinct ~600-token
   contexts, each sent once, then each again with one more turn: median time to first token of
   the return (the neuron parks prefixes in host RAM, llama-server has its --cache-ram), and of
   the first visit for reference.
6. (run after 5) a team on one system prompt, more developers than sequences: twelve
   developers, each the ~2k-token system prompt of scenario 3 and ~150 tokens of their own, sent
   once, then each again with one more turn: median time to first token of the return. The
   neuron keeps the system prompt's cells once for all of them, also for those coming back
   from RAM, and holds it once in RAM: `team_parked_mb` is what a neuron has parked at the
   end (from its /health).

`--scenarios 3,6` runs a subset.

All servers of one model are started together and take turns request by request (an idle one
uses no CPU), so that the drift of a shared VM over minutes falls on all of them alike; only
scenario 4's long generations run on one server at a time. Servers: `neuron` and
`llama-server` with their defaults (flash attention `auto`: llama.cpp turns it on for the CPU),
`neuron-fa-on`, `neuron-fa-off` and `llama-server-fa-off` (forced), with --old-commit a git
worktree of that commit as "today's neuron" (the engine before continuous batching; it shares
this virtualenv), and with --prev-commit another one run with its current defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402

N_CTX = 4096
PARALLEL = 4
# Scenario 5: twice the neuron's sequences (2 × PARALLEL) plus two developers, ~600 tokens each.
RETURNING = 10
RETURNING_FILES = 60
TEAM = 12
TEAM_FILES = 15
COUNTING = ["1, 2, 3, 4,", "10, 11, 12, 13,", "100, 101, 102, 103,", "A, B, C, D,"]
SYSTEM = "".join(
    f"Rule {i}: answer politely, cite the section you rely on, and keep answers short.\n"
    for i in range(1, 120)
)


@dataclass
class Server:
    name: str
    url: str
    model: str
    proc: subprocess.Popen
    workdir: Path

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _wait(url: str, proc: subprocess.Popen, path: str = "/health", timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode})")
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def start_neuron(name: str, gguf: Path, threads: int, code: Path, engine: str | None) -> Server:
    """`engine`: the lines of neuron.toml's [engine] table; None for a neuron that has none."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    config = workdir / "neuron.toml"
    text = f'listen = "127.0.0.1:{port}"\nmodel_dirs = ["{gguf.parent}"]\nn_threads = {threads}\n'
    if engine is not None:
        text += f"[engine]\nparallel = {PARALLEL}\n{engine}"
    config.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuron.cli", "--config", str(config)],
        cwd=code,
        env=env,
        stdout=(workdir / "log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    _wait(url, proc)
    body = {"model": "m", "source": str(gguf), "n_ctx": N_CTX}
    response = httpx.post(url + "/models/load", json=body, timeout=300)
    response.raise_for_status()
    return Server(name, url, "m", proc, workdir)


def start_llama_server(name: str, binary: Path, gguf: Path, threads: int, fa: str) -> Server:
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-llama-server-"))
    # Same KV as the neuron: one unified pool of n_ctx × parallel cells.
    args = [
        str(binary), "-m", str(gguf), "--port", str(port), "--host", "127.0.0.1",
        "-c", str(N_CTX * PARALLEL), "-np", str(PARALLEL), "-kvu",
        "-t", str(threads), "-tb", str(threads), "-b", "512", "-ub", "512", "-fa", fa,
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=(workdir / "log").open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait(url, proc, "/health")
    return Server(name, url, "m", proc, workdir)


@dataclass
class Run:
    ttft: float
    total: float
    tokens: int
    first_at: float
    last_at: float

    @property
    def decode_tok_s(self) -> float:
        span = self.last_at - self.first_at
        return (self.tokens - 1) / span if span > 0 and self.tokens > 1 else 0.0


async def complete(client: httpx.AsyncClient, server: Server, prompt: str, max_tokens: int) -> Run:
    body = {
        "model": server.model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = last = None
    pieces = 0
    usage_tokens = None
    async with client.stream("POST", server.url + "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage_tokens = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or []:
                if choice.get("text"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    pieces += 1
    end = time.perf_counter()
    first = first or end
    return Run(first - started, end - started, usage_tokens or pieces, first, last or end)


async def scenarios(servers: list[Server], wanted: set[int]) -> dict[str, dict[str, float]]:
    """The `wanted` scenarios on every server, the servers taking turns (module docstring)."""
    out: dict[str, dict[str, float]] = {server.name: {} for server in servers}

    def record(key: str, values: dict[str, list[float]]) -> None:
        for name, samples in values.items():
            out[name][key] = statistics.median(samples)

    def samples() -> dict[str, list[float]]:
        return {server.name: [] for server in servers}

    pauses = random.Random(20261202)
    # A new connection per request, for every server: llama-server closes idle keep-alive
    # connections, which would otherwise surface as spurious disconnects.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        for server in servers:
            await complete(client, server, "Warm up:", 8)

        if 1 in wanted:
            singles = samples()
            for _ in range(3):
                for server in servers:
                    run = await complete(client, server, COUNTING[0], 128)
                    singles[server.name].append(run.decode_tok_s)
            record("single_tok_s", singles)

        if 2 in wanted:
            aggregates = samples()
            for _ in range(3):
                for server in servers:
                    started = time.perf_counter()
                    runs = await asyncio.gather(
                        *(complete(client, server, p, 128) for p in COUNTING)
                    )
                    elapsed = time.perf_counter() - started
                    aggregates[server.name].append(sum(run.tokens for run in runs) / elapsed)
            record("aggregate4_tok_s", aggregates)

        if 3 in wanted:
            histories = {"A": SYSTEM, "B": SYSTEM}
            ttfts = samples()
            for turn in range(6):
                for name in ("A", "B"):
                    histories[name] += (
                        f"\nUser {name}{turn}: tell me about topic {name}{turn}.\nAnswer:"
                    )
                    for server in servers:
                        run = await complete(client, server, histories[name], 16)
                        ttfts[server.name].append(run.ttft)
                    histories[name] += " (an answer)"
            record("conversation_ttft_median_s", ttfts)

        # Scenario 5: more developers than sequences. Each has a context of its own; when all
        # have been once, each comes back with one more turn.
        if 5 in wanted:
            contexts = [
                f"Repository {k}. " + " ".join(f"src/m{k}/f{i}.py" for i in range(RETURNING_FILES))
                for k in range(RETURNING)
            ]
            first_visit, returning = await visits(client, servers, contexts)
            record("first_visit_ttft_median_s", first_visit)
            record("returning_ttft_median_s", returning)

        # Scenario 6: a team on one system prompt, more developers than sequences.
        if 6 in wanted:
            team = [
                SYSTEM
                + f"\nDeveloper {k} works on: "
                + " ".join(f"src/t{k}/f{i}.py" for i in range(TEAM_FILES))
                for k in range(TEAM)
            ]
            _, returning = await visits(client, servers, team)
            record("team_returning_ttft_median_s", returning)
            for server in servers:
                parked = await parked_in_ram(client, server)
                if parked is not None:
                    out[server.name]["team_parked_mb"] = parked

        short = "Hello, my name is"

        async def short_ttft(server: Server) -> float:
            await asyncio.sleep(pauses.uniform(0.05, 0.15))
            return (await complete(client, server, short, 8)).ttft

        if 4 not in wanted:
            return out
        alone = samples()
        for _ in range(5):
            for server in servers:
                alone[server.name].append(await short_ttft(server))
        record("short_ttft_alone_s", alone)
        for server in servers:
            longs = [asyncio.create_task(complete(client, server, p, 256)) for p in COUNTING[:3]]
            await asyncio.sleep(1.0)
            during = [await short_ttft(server) for _ in range(5)]
            # A one-at-a-time engine serves the short ones only after the long ones: say so.
            out[server.name]["long_ones_outlasted_short"] = float(
                not any(task.done() for task in longs)
            )
            await asyncio.gather(*longs)
            out[server.name]["short_ttft_during_3_long_s"] = statistics.median(during)
    return out


async def visits(
    client: httpx.AsyncClient, servers: list[Server], contexts: list[str]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each context once, then each again with one more turn: time to first token of both."""
    first_visit: dict[str, list[float]] = {server.name: [] for server in servers}
    returning: dict[str, list[float]] = {server.name: [] for server in servers}
    for context in contexts:
        for server in servers:
            run = await complete(client, server, context, 4)
            first_visit[server.name].append(run.ttft)
    for context in contexts:
        for server in servers:
            run = await complete(client, server, context + "\nUser: and now?\nAnswer:", 4)
            returning[server.name].append(run.ttft)
    return first_visit, returning


async def parked_in_ram(client: httpx.AsyncClient, server: Server) -> float | None:
    """MiB of prefixes a neuron holds parked in host RAM (None: a server that does not say)."""
    models = (await client.get(server.url + "/health")).json().get("models") or []
    figures = [model.get("parked_bytes") for model in models]
    if not figures or None in figures:
        return None
    return sum(figures) / (1 << 20)


def old_worktree(commit: str) -> Path:
    path = ROOT / ".bench" / f"neuron-{commit}"
    if not path.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), commit], check=True, cwd=ROOT
        )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="smollm2-135m-instruct,gemma3-270m")
    parser.add_argument("--old-commit", default=None)
    parser.add_argument("--prev-commit", default=None)
    parser.add_argument("--scenarios", default="1,2,3,4,5,6")
    parser.add_argument(
        "--servers",
        default="neuron,neuron-fa-on,llama-server,llama-server-fa-off,old,prev",
        help="which to run",
    )
    parser.add_argument("--llama-server", default=str(ROOT / ".bench/llama-server/llama-server"))
    args = parser.parse_args()
    from neuron.sources import resolve_source

    binary = Path(args.llama_server)
    wanted = args.servers.split(",")
    results: dict[str, dict[str, dict[str, float]]] = {}
    for model in args.models.split(","):
        gguf = resolve_source(model, model_dirs=(), hf_cache=None).primary
        starters: dict[str, Callable[[], Server]] = {
            "neuron": partial(start_neuron, "neuron", gguf, args.threads, ROOT, ""),
            "neuron-fa-on": partial(
                start_neuron, "neuron-fa-on", gguf, args.threads, ROOT, 'flash_attn = "on"\n'
            ),
            "neuron-fa-off": partial(
                start_neuron, "neuron-fa-off", gguf, args.threads, ROOT, 'flash_attn = "off"\n'
            ),
            "llama-server": partial(
                start_llama_server, "llama-server", binary, gguf, args.threads, "auto"
            ),
            "llama-server-fa-off": partial(
                start_llama_server, "llama-server-fa-off", binary, gguf, args.threads, "off"
            ),
        }
        if args.old_commit:
            code = old_worktree(args.old_commit)
            name = f"neuron@{args.old_commit}"
            starters["old"] = partial(start_neuron, name, gguf, args.threads, code, None)
        if args.prev_commit:
            code = old_worktree(args.prev_commit)
            name = f"neuron@{args.prev_commit}"
            starters["prev"] = partial(start_neuron, name, gguf, args.threads, code, "")
        servers: list[Server] = []
        try:
            for key in wanted:
                if key in starters:
                    servers.append(starters[key]())
            chosen = {int(number) for number in args.scenarios.split(",")}
            results[model] = asyncio.run(scenarios(servers, chosen))
        finally:
            for server in servers:
                server.stop()
        for name, figures in results[model].items():
            print(model, name, json.dumps(figures), flush=True)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "engine.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

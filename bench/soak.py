"""Soak: a gateway and a neuron under steady mixed traffic with forced evictions and admin loads.

Not a test. Run from the repository root (one model-serving process at a time):

    .venv/bin/python bench/soak.py [--minutes 10] [--clients 4]

The neuron fakes a 600 MiB GPU holding two of the catalogue's three SmolLM2 ids (one KV
sequence each), so requests for the third evict one; an admin task loads and unloads ids every
few seconds on top. Clients alternate OpenAI chat (streamed and not), completions and Anthropic
messages. Counted as errors: any answer other than 200, and 429/503 without Retry-After. RSS of
both processes is sampled after a warm-up and at the end, each time with every model unloaded
(so that what is compared is the programs, not how many models happen to be resident). The
report also has a `timeline`: both programs' RSS every `--sample-s` seconds under traffic
(whatever is resident then), to tell a plateau from a slope.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import CortexProcess, NeuronProcess  # noqa: E402

SMOL = "smollm2-135m-instruct"
IDS = ["soak-a", "soak-b", "soak-c"]
MODELS = "".join(f'[[models]]\nid = "{i}"\nsource = "{SMOL}"\nn_ctx = 1024\n\n' for i in IDS)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


SAMPLES: list[str] = []  # the first few bodies of answers counted as errors


async def one_request(client: httpx.AsyncClient, rng: random.Random) -> tuple[str, int, bool]:
    model = rng.choice(IDS)
    kind = rng.choice(["chat", "chat-stream", "completion", "anthropic", "anthropic-stream"])
    user = [{"role": "user", "content": f"Say something about the number {rng.randint(1, 99)}."}]
    if kind.startswith("chat"):
        path, body = "/v1/chat/completions", {"model": model, "messages": user, "max_tokens": 12}
    elif kind == "completion":
        path, body = "/v1/completions", {"model": model, "prompt": "1, 2, 3,", "max_tokens": 12}
    else:
        path, body = "/v1/messages", {"model": model, "messages": user, "max_tokens": 12}
    body["stream"] = kind.endswith("stream")
    async with client.stream("POST", path, json=body) as response:
        text = (await response.aread()).decode(errors="replace")
    ok = response.status_code == 200
    if ok and body["stream"]:
        ok = "[DONE]" in text or "message_stop" in text
    retryable = response.status_code in (429, 503) and "retry-after" in response.headers
    if not (ok or retryable) and len(SAMPLES) < 5:
        SAMPLES.append(f"{kind} {response.status_code} …{text[-400:]}")
    return kind, response.status_code, ok or retryable


async def clients(url: str, count: int, until: float, stats: Counter[str]) -> None:
    async def run(seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            while time.monotonic() < until:
                try:
                    kind, status, fine = await one_request(client, rng)
                except httpx.HTTPError as exc:
                    stats[f"transport:{type(exc).__name__}"] += 1
                    continue
                stats[f"{kind}:{status}"] += 1
                if not fine:
                    stats["errors"] += 1

    async def admin() -> None:
        rng = random.Random(99)
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            while time.monotonic() < until:
                await asyncio.sleep(rng.uniform(2, 6))
                model, action = rng.choice(IDS), rng.choice(["load", "unload"])
                response = await client.post(f"/admin/models/{model}/{action}", json={})
                stats[f"admin-{action}:{response.status_code}"] += 1
                if response.status_code >= 500:
                    stats["errors"] += 1

    await asyncio.gather(*(run(seed) for seed in range(count)), admin())


def unload_all(url: str) -> None:
    """Unload every model, so that RSS is compared with the same (empty) set resident."""
    for model in IDS:
        httpx.post(f"{url}/admin/models/{model}/unload", json={"force": True}, timeout=60)
    time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=4)
    # Two minutes: under churn the neuron's malloc arenas reach their working size in about two
    # (64 → 79 → 84 MiB at 1.1 and 2.2 min with four clients and an unload every 3 s) and then
    # stay within ±1 MiB; a one-minute warm-up still counted the tail of that as growth.
    parser.add_argument("--warm-up-s", type=float, default=120)
    parser.add_argument("--sample-s", type=float, default=30, help="timeline sampling period")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    neuron = NeuronProcess(
        workdir, "vram_headroom_mb = 0\n[engine]\nparallel = 1\n", {"NEURON_FAKE_GPUS": "0:600MiB"}
    )
    neuron.wait_ready()
    cortex = CortexProcess(workdir, {"n1": neuron}, MODELS)
    cortex.wait_ready()
    try:
        stats: Counter[str] = Counter()
        warm_until = time.monotonic() + args.warm_up_s
        asyncio.run(clients(cortex.url, args.clients, warm_until, stats))
        unload_all(cortex.url)
        start = {"neuron": rss_mb(neuron.proc.pid), "cortex": rss_mb(cortex.proc.pid)}
        stats.clear()
        began = time.monotonic()
        timeline: list[dict[str, float]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(args.sample_s):
                timeline.append(
                    {
                        "t_s": round(time.monotonic() - began),
                        "neuron": round(rss_mb(neuron.proc.pid), 1),
                        "cortex": round(rss_mb(cortex.proc.pid), 1),
                    }
                )

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        asyncio.run(clients(cortex.url, args.clients, began + args.minutes * 60, stats))
        done.set()
        sampler.join()
        unload_all(cortex.url)
        end = {"neuron": rss_mb(neuron.proc.pid), "cortex": rss_mb(cortex.proc.pid)}
        requests = sum(v for k, v in stats.items() if ":" in k and not k.startswith("admin"))
        report = {
            "minutes": args.minutes,
            "clients": args.clients,
            "warm_up_s": args.warm_up_s,
            "requests": requests,
            "errors": stats["errors"],
            "rss_start_mb": {k: round(v, 1) for k, v in start.items()},
            "rss_end_mb": {k: round(v, 1) for k, v in end.items()},
            "rss_growth_pct": {k: round(100 * (end[k] / start[k] - 1), 1) for k in start},
            "answers": dict(sorted(stats.items())),
            "timeline": timeline,
            "error_samples": SAMPLES,
        }
        print(json.dumps(report, indent=2))
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / "soak.json").write_text(json.dumps(report, indent=2))
    finally:
        cortex.stop()
        neuron.stop()


if __name__ == "__main__":
    main()

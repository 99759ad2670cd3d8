"""Prefill and decode tok/s through the neuron's HTTP API vs bare llama-cpp-python, side by side.

Both sides load the same GGUF with the same n_ctx, n_threads (= n_threads_batch), n_gpu_layers
and get the same prompt, max_tokens, temperature 0 and seed, through the same call
(`Llama.create_completion(stream=True)`):

* bare: an in-process `llama_cpp.Llama`; `reset()` before each run so the prompt is prefilled
  from scratch;
* neuron: a real `neuron` daemon on a loopback port, streamed with httpx over SSE
  (`/v1/completions`); the request carries `seed`, which makes the neuron reset its KV cache too.

Both sides are timed the same way, where the tokens arrive: TTFT is the start of the call (or of
the HTTP request) to the first chunk with text; prefill tok/s = prompt tokens / TTFT; decode tok/s
= (completion tokens - 1) / (first text chunk → chunk carrying finish_reason). A warm-up run per
side is discarded, then the measured runs alternate bare/neuron in ABBA order (see `_schedule`);
neuron/bare is the median of the ratios of adjacent bare/neuron runs.
The neuron sits idle while the bare side runs (its CPU time over those runs is reported) and the
bare `Llama` sits idle while the neuron runs; the two never generate at once.

    python -m bench.neuron_tokens [--model NAME]... [--threads N]... [--runs 5] [--rounds 1]
                                  [--json out.json]

`--model` and `--threads` repeat (one neuron process per thread count); `--rounds` repeats the
whole comparison with fresh processes and pools the runs, because two processes running the very
same bare code differ by up to ~3 % on a small VM (bench/README.md).

Exit status is 0 whether or not the target (neuron decode ≥ 97 % of bare) is met; the verdict is
printed as PASS/MISS. A run that does not produce exactly max_tokens tokens is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.97
BUSY_LOAD = 1.5  # 1-minute load average above which a run is flagged as disturbed
SERVED_ID = "bench"

# ~280 tokens of prose ending in an open numbered list: the models keep listing well past
# 128 tokens at temperature 0, so decode is not cut short by an end-of-generation token.
PROMPT = """\
The following is an excerpt from a field guide used by volunteers at a regional natural history \
museum. Volunteers are asked to learn the common names of animals so that they can answer \
questions from visitors of all ages, from school groups to retired teachers. The guide explains \
that every animal listed has a card in the reference drawer, with a photograph, a short \
description of its habitat, its diet, its typical size and weight, and notes on how it behaves \
in the wild. Cards are sorted alphabetically by common name, and the drawer is checked every \
month to make sure that no card is missing or misplaced. When a visitor asks about an animal that \
does not have a card, the volunteer writes its name in the notebook by the door, and the \
education team prepares a new card within a few weeks. Over the years the drawer has grown to \
several hundred cards, and new volunteers often find the list intimidating at first. To help \
them, the guide reproduces the complete index of the drawer below, one animal per line, numbered \
in the same order as the cards. Volunteers are encouraged to read it aloud during their first \
week.

Complete index of the reference drawer (one animal per line):
1. Aardvark
2. Albatross
3. Alligator
4. Alpaca
5. Anteater
6. Antelope
7. Armadillo
"""


@dataclass(frozen=True)
class Settings:
    model: str
    path: str
    n_ctx: int
    threads: int
    n_gpu_layers: int
    max_tokens: int
    seed: int


@dataclass
class Run:
    side: str  # "bare" or "neuron"
    index: int  # -1: warm-up
    prompt_tokens: int
    completion_tokens: int
    text_chunks: int
    finish_reason: str | None
    ttft_s: float
    decode_s: float  # first text chunk → chunk with finish_reason
    total_s: float
    text: str = field(repr=False)

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.ttft_s

    @property
    def decode_tok_s(self) -> float:
        return (self.completion_tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["prefill_tok_s"] = round(self.prefill_tok_s, 2)
        body["decode_tok_s"] = round(self.decode_tok_s, 2)
        return body


class _Clock:
    """Arrival times of the chunks of one streamed completion (same rules for both sides)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.chunks = 0
        self.text: list[str] = []
        self.finish_reason: str | None = None

    def chunk(self, choice: dict[str, Any], now: float) -> None:
        if choice.get("text"):
            self.chunks += 1
            self.text.append(choice["text"])
            if self.first is None:
                self.first = now
            self.last = now
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
            self.last = now

    def run(self, side: str, index: int, prompt_tokens: int, completion_tokens: int) -> Run:
        if self.first is None or self.last is None:
            raise RuntimeError(f"{side}: the completion produced no text")
        return Run(
            side=side,
            index=index,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            text_chunks=self.chunks,
            finish_reason=self.finish_reason,
            ttft_s=self.first - self.started,
            decode_s=self.last - self.first,
            total_s=time.perf_counter() - self.started,
            text="".join(self.text),
        )


# -- bare side -----------------------------------------------------------------------------------


class Bare:
    """An in-process `Llama` built with the kwargs the neuron's manager would use."""

    def __init__(self, settings: Settings) -> None:
        import llama_cpp

        self.settings = settings
        self.llm = llama_cpp.Llama(
            model_path=settings.path,
            n_ctx=settings.n_ctx,
            n_gpu_layers=settings.n_gpu_layers,
            embedding=False,
            verbose=False,
            n_threads=settings.threads,
            n_threads_batch=settings.threads,
        )

    def run(self, index: int) -> Run:
        llm, s = self.llm, self.settings
        # what create_completion evaluates: BOS + prompt, special tokens parsed
        prompt_tokens = len(llm.tokenize(PROMPT.encode(), add_bos=True, special=True))
        clock = _Clock()
        llm.reset()
        for chunk in llm.create_completion(
            prompt=PROMPT,
            max_tokens=s.max_tokens,
            temperature=0.0,
            seed=s.seed,
            stream=True,
        ):
            clock.chunk(chunk["choices"][0], time.perf_counter())
        # finish_reason "length" means exactly max_tokens were sampled; after an end-of-generation
        # token every completion token has been evaluated, so the context holds them all.
        if clock.finish_reason == "length":
            completion_tokens = s.max_tokens
        else:
            completion_tokens = llm.n_tokens - prompt_tokens
        return clock.run("bare", index, prompt_tokens, completion_tokens)

    def close(self) -> None:
        self.llm.close()


# -- neuron side ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Neuron:
    """A real neuron daemon in a child process on a loopback port, and an httpx client for it."""

    def __init__(self, workdir: Path, threads: int, model_dirs: list[str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "neuron.toml"
        config.write_text(
            f'listen = "127.0.0.1:{self.port}"\n'
            f"n_threads = {threads}\n"
            f"model_dirs = {json.dumps(model_dirs)}\n"
        )
        self.log_path = workdir / "neuron.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "neuron.cli", "--config", str(config), "--log-level", "WARNING"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(300, connect=10))
        try:
            self._wait_ready(timeout=60)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"neuron exited early:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if self.client.get("/health", timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"neuron did not come up:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def cpu_s(self) -> float:
        """User + system CPU seconds the neuron process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def load(self, settings: Settings, source: str) -> dict[str, Any]:
        body = {
            "model": SERVED_ID,
            "source": source,
            "n_ctx": settings.n_ctx,
            "n_gpu_layers": settings.n_gpu_layers,
        }
        response = self.client.post("/models/load", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"load failed ({response.status_code}): {response.text}")
        return response.json()

    def unload(self) -> None:
        self.client.post("/models/unload", json={"model": SERVED_ID})

    def run(self, settings: Settings, index: int) -> Run:
        body = {
            "model": SERVED_ID,
            "prompt": PROMPT,
            "max_tokens": settings.max_tokens,
            "temperature": 0,
            "seed": settings.seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        usage: dict[str, int] | None = None
        clock = _Clock()
        with self.client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise RuntimeError(f"completion failed ({response.status_code}): {response.text}")
            for line in response.iter_lines():
                now = time.perf_counter()
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(f"neuron stream error: {chunk['error']}")
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices", []):
                    clock.chunk(choice, now)
        if usage is None:
            raise RuntimeError("the neuron sent no usage chunk")
        return clock.run("neuron", index, usage["prompt_tokens"], usage["completion_tokens"])

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# -- driving -------------------------------------------------------------------------------------


def _schedule(runs: int, first: int = 0) -> Iterator[tuple[int, str]]:
    """ABBA order: bare, neuron, neuron, bare, … Interleaving exposes both sides to the same
    drift in background load (this runs on shared machines); alternating which side goes first
    cancels any advantage of running right after the other side (warm caches, CPU clocks)."""
    for index in range(first, first + runs):
        sides = ("bare", "neuron") if index % 2 == 0 else ("neuron", "bare")
        for side in sides:
            yield index, side


@dataclass
class Stats:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        return cls(statistics.median(values), min(values), max(values))

    def cell(self, digits: int = 0) -> str:
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}–{self.high:.{digits}f})"


@dataclass
class Result:
    settings: Settings
    runs: list[Run]
    warmups: list[Run]
    neuron_idle_cpu_s: float  # neuron CPU time while the bare side ran
    checks: list[str]

    def side(self, side: str) -> list[Run]:
        return [run for run in self.runs if run.side == side]

    def stats(self, side: str, metric: str) -> Stats:
        return Stats.of([getattr(run, metric) for run in self.side(side)])

    def ratio(self, metric: str) -> float:
        """The headline neuron/bare figure: the median of the per-pair ratios."""
        return self.paired(metric).median

    def ratio_of_medians(self, metric: str) -> float:
        return self.stats("neuron", metric).median / self.stats("bare", metric).median

    def merged(self, other: Result) -> Result:
        """This result and another round of the same settings (fresh processes) pooled."""
        runs, warmups = self.runs + other.runs, self.warmups + other.warmups
        idle = self.neuron_idle_cpu_s + other.neuron_idle_cpu_s
        return Result(self.settings, runs, warmups, idle, _checks(self.settings, runs + warmups))

    def paired(self, metric: str) -> Stats:
        """neuron/bare of each pair of adjacent runs (same index). Robust to drift in the machine's
        speed and to the level shifts between rounds, which are as large as the effect measured
        (fresh processes differ by a few % on their own)."""
        bare = {run.index: getattr(run, metric) for run in self.side("bare")}
        return Stats.of([getattr(run, metric) / bare[run.index] for run in self.side("neuron")])

    def as_dict(self) -> dict[str, Any]:
        summary = {
            side: {
                metric: asdict(self.stats(side, metric))
                for metric in ("prefill_tok_s", "decode_tok_s", "ttft_s")
            }
            for side in ("bare", "neuron")
        }
        return {
            "settings": asdict(self.settings),
            "summary": summary,
            "neuron_over_bare": {  # medians (min, max) of the per-pair ratios
                "prefill": asdict(self.paired("prefill_tok_s")),
                "decode": asdict(self.paired("decode_tok_s")),
                "prefill_ratio_of_medians": self.ratio_of_medians("prefill_tok_s"),
                "decode_ratio_of_medians": self.ratio_of_medians("decode_tok_s"),
            },
            "target_decode": TARGET,
            "pass": self.ratio("decode_tok_s") >= TARGET,
            "neuron_idle_cpu_s": self.neuron_idle_cpu_s,
            "checks": self.checks,
            "runs": [run.as_dict() for run in self.runs],
            "warmups": [run.as_dict() for run in self.warmups],
        }


def _checks(settings: Settings, runs: list[Run]) -> list[str]:
    """Problems that make the comparison unfair or the decode figure short; empty when clean."""
    problems = []
    for run in runs:
        name = f"{run.side} run {run.index}"
        if run.completion_tokens != settings.max_tokens or run.finish_reason != "length":
            problems.append(
                f"{name}: {run.completion_tokens} completion tokens "
                f"(finish_reason {run.finish_reason!r}), expected {settings.max_tokens}"
            )
    if len({run.prompt_tokens for run in runs}) > 1:
        problems.append(f"prompt token counts differ: {sorted({r.prompt_tokens for r in runs})}")
    if len({run.text for run in runs}) > 1:
        problems.append("the generated text is not identical on every run and side")
    return problems


def bench_model(
    neuron: Neuron, settings: Settings, source: str, runs: int, first: int = 0
) -> Result:
    def log(message: str) -> None:
        print(f"[{settings.model}, {settings.threads}t] {message}", file=sys.stderr, flush=True)

    started = time.monotonic()
    loaded = neuron.load(settings, source)
    log(f"neuron loaded {Path(loaded['path']).name} (n_ctx {loaded['n_ctx']})")
    bare = Bare(settings)
    try:
        warmups = [bare.run(-1), neuron.run(settings, -1)]
        log("warm-up done")
        measured: list[Run] = []
        idle_cpu = 0.0
        for index, side in _schedule(runs, first):
            time.sleep(0.1)  # let the other side's spinning worker threads go to sleep
            if side == "bare":
                before = neuron.cpu_s()
                measured.append(bare.run(index))
                idle_cpu += neuron.cpu_s() - before
            else:
                measured.append(neuron.run(settings, index))
            run = measured[-1]
            log(
                f"run {index} {side:6s}: prefill {run.prefill_tok_s:7.1f} tok/s, "
                f"decode {run.decode_tok_s:6.1f} tok/s ({run.completion_tokens} tokens)"
            )
    finally:
        bare.close()
        with contextlib.suppress(httpx.HTTPError):
            neuron.unload()
    log(f"done in {time.monotonic() - started:.1f}s")
    return Result(settings, measured, warmups, idle_cpu, _checks(settings, measured + warmups))


def _source(model: str) -> tuple[str, str, list[str]]:
    """(GGUF path, source for /models/load, model_dirs for the neuron's config)."""
    candidate = Path(model).expanduser()
    if candidate.suffix == ".gguf" and candidate.is_file():
        path = candidate.resolve()
        return str(path), str(path), [str(path.parent)]
    from neuron.sources import resolve_source

    return str(resolve_source(model, model_dirs=(), hf_cache=None).primary), model, []


# -- report --------------------------------------------------------------------------------------


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} CPUs"


def _percent(stats: Stats) -> str:
    return f"{stats.median:.1%} ({100 * stats.low:.1f}–{100 * stats.high:.1f})"


def table(results: list[Result]) -> str:
    header = (
        "| model | n_ctx | threads | prompt tok | completion tok "
        "| prefill tok/s bare | prefill tok/s neuron | prefill neuron/bare "
        "| decode tok/s bare | decode tok/s neuron | decode neuron/bare |"
    )
    lines = [header, "|" + "---|" * 11]
    for result in results:
        s = result.settings
        completion = sorted({run.completion_tokens for run in result.runs})
        lines.append(
            f"| {s.model} | {s.n_ctx} | {s.threads} | {result.runs[0].prompt_tokens} "
            f"| {'/'.join(map(str, completion))} "
            f"| {result.stats('bare', 'prefill_tok_s').cell()} "
            f"| {result.stats('neuron', 'prefill_tok_s').cell()} "
            f"| {_percent(result.paired('prefill_tok_s'))} "
            f"| {result.stats('bare', 'decode_tok_s').cell(1)} "
            f"| {result.stats('neuron', 'decode_tok_s').cell(1)} "
            f"| **{_percent(result.paired('decode_tok_s'))}** |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.neuron_tokens",
        description="Decode and prefill tok/s: neuron HTTP API vs bare llama-cpp-python.",
    )
    parser.add_argument(
        "--model",
        action="append",
        help="catalogue name or path to a .gguf; repeatable (default smollm2-135m-instruct)",
    )
    parser.add_argument("--runs", type=int, default=5, help="measured runs per side (default 5)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat with a fresh neuron process and bare Llama this many times and pool the "
        "runs (default 1); processes differ by a few %% on their own, see bench/README.md",
    )
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument(
        "--threads",
        type=int,
        action="append",
        help="n_threads and n_threads_batch on both sides; repeatable, one neuron per value "
        "(default: llama-cpp-python's own default, half the CPUs)",
    )
    parser.add_argument("--n-gpu-layers", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json", type=Path, help="write settings, summary and every run here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.rounds < 1 or args.max_tokens < 2:
        parser.error("--runs and --rounds must be ≥ 1, --max-tokens ≥ 2")

    started = time.monotonic()
    load_before = os.getloadavg()
    models = args.model or ["smollm2-135m-instruct"]
    thread_counts = args.threads or [max(1, (os.cpu_count() or 2) // 2)]
    sources = [_source(model) for model in models]
    model_dirs = sorted({d for _, _, dirs in sources for d in dirs})
    pooled: dict[tuple[str, int], Result] = {}
    for threads in thread_counts:
        for round_ in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="neuron-bench-") as workdir:
                neuron = Neuron(Path(workdir), threads, model_dirs)
                try:
                    for model, (path, source, _) in zip(models, sources, strict=True):
                        settings = Settings(
                            model=Path(model).name,
                            path=path,
                            n_ctx=args.n_ctx,
                            threads=threads,
                            n_gpu_layers=args.n_gpu_layers,
                            max_tokens=args.max_tokens,
                            seed=args.seed,
                        )
                        result = bench_model(
                            neuron, settings, source, args.runs, first=round_ * args.runs
                        )
                        key = (model, threads)
                        pooled[key] = pooled[key].merged(result) if key in pooled else result
                except Exception:
                    print(f"neuron log:\n{neuron.log()}", file=sys.stderr)
                    raise
                finally:
                    neuron.stop()
    results = list(pooled.values())
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()

    import llama_cpp

    print(
        f"machine: {_machine()}; llama-cpp-python {llama_cpp.__version__}; "
        f"{args.rounds} round(s) × {args.runs} runs per side, each round after 1 warm-up per "
        "side, ABBA order; tok/s: median (min–max) of the runs; neuron/bare: median (min–max) "
        "of the per-pair ratios"
    )
    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; took {elapsed:.0f}s"
    )
    if load_before[0] > BUSY_LOAD:  # the load after includes this benchmark's own
        print(
            f"WARNING: load average above {BUSY_LOAD} before the start (other work on this "
            "machine): the figures are unreliable, rerun when it is quiet"
        )
    print()
    print(table(results))
    print()
    for result in results:
        ratio = result.ratio("decode_tok_s")
        verdict = "PASS" if ratio >= TARGET else "MISS"
        print(
            f"{verdict}: {result.settings.model}, {result.settings.threads} threads: neuron decode "
            f"is {ratio:.1%} of bare (median of per-pair ratios; target ≥ {TARGET:.0%}); ratio "
            f"of medians {result.ratio_of_medians('decode_tok_s'):.1%}; neuron CPU while idle "
            f"during bare runs {result.neuron_idle_cpu_s:.2f}s"
        )
        for problem in result.checks:
            print(f"  WARNING: {problem}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "benchmark": "neuron_tokens",
            "machine": _machine(),
            "python": platform.python_version(),
            "llama_cpp_python": llama_cpp.__version__,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "elapsed_s": elapsed,
            "prompt": PROMPT,
            "models": [result.as_dict() for result in results],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

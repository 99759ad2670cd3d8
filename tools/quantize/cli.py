"""``cortex-quantize``: quantize a GGUF into one or more types and show what each costs.

    cortex-quantize INPUT.gguf --types Q4_K_M,Q8_0 [--out-dir DIR] [--imatrix FILE]
        [--allow-requantize] [--ppl-text FILE] [--ppl-ctx N] [--ppl-chunks N]
        [--models-toml PATH --id ID [--n-ctx N]] [--threads N] [--json PATH]

Everything is validated before any work starts (types, the input GGUF and whether it is already
quantized, the importance matrix against the model's tensors, the perplexity text — tokenized
with the input's vocabulary —, models.toml, the output directory and its free space). A
rejected invocation prints one ``cortex-quantize: error: …`` line and exits 2 without writing
anything; a failure while quantizing or evaluating exits 1; Ctrl-C exits 130 and leaves no
partial file.

Then each type is quantized by llama.cpp (per-tensor progress bar), each output — and the input,
as the reference — is scored on the text, and a table shows type, file, size, bits per weight,
perplexity and its change against the input. Outputs are ``STEM-TYPE.gguf`` next to the input
(or in ``--out-dir``); an existing file of that name is replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from .errors import InputError, RunError
from .gguf_info import ModelInfo, read_model_info
from .imatrix import Imatrix, check_against, load_imatrix
from .perplexity import TokenizedText
from .quant_types import (
    QUANT_TYPES,
    QuantType,
    ResultRow,
    delta_percent,
    mib,
    order_rows,
    output_path,
    parse_types,
)

__all__ = ["build_parser", "main"]

PROG = "cortex-quantize"
DEFAULT_PPL_CTX = 256
DEFAULT_PPL_CHUNKS = 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Quantize a GGUF with llama.cpp (through llama-cpp-python) into one or more "
        "types, then compare size, bits per weight and perplexity.",
    )
    parser.add_argument(
        "input", nargs="?", type=Path, help="the GGUF to quantize (F32/F16/BF16/Q8_0)"
    )
    parser.add_argument(
        "--types", help="comma-separated output types, e.g. Q4_K_M,Q8_0 (see --list-types)"
    )
    parser.add_argument("--list-types", action="store_true", help="list the types and exit")
    parser.add_argument("--out-dir", type=Path, help="where outputs go (default: next to INPUT)")
    parser.add_argument(
        "--imatrix", type=Path, help="importance matrix from llama-imatrix (GGUF or legacy .dat)"
    )
    parser.add_argument(
        "--allow-requantize",
        action="store_true",
        help="accept an input that is already quantized coarser than Q8_0 (quality suffers)",
    )
    ppl = parser.add_argument_group("perplexity")
    ppl.add_argument("--ppl-text", type=Path, help="UTF-8 text to measure perplexity on")
    ppl.add_argument("--ppl-ctx", type=int, help=f"tokens per chunk ({DEFAULT_PPL_CTX})")
    ppl.add_argument(
        "--ppl-chunks",
        type=int,
        help=f"at most this many chunks, 0 = the whole text ({DEFAULT_PPL_CHUNKS})",
    )
    ppl.add_argument(
        "--ppl-gpu-layers",
        type=int,
        default=0,
        help="layers to offload while measuring (-1 = all; default 0, CPU only)",
    )
    cat = parser.add_argument_group("models.toml")
    cat.add_argument("--models-toml", type=Path, help="add/update the entry for the first type")
    cat.add_argument("--id", dest="model_id", help="the model id of that entry")
    cat.add_argument("--n-ctx", type=int, help="its n_ctx (omitted: the catalogue default)")
    parser.add_argument("--threads", type=int, default=_cpu_count(), help="CPU threads")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    return parser


@dataclass(frozen=True)
class Plan:
    """A validated invocation, built by `prepare` before any quantizing starts: the input, the types
    with their output paths (in the same order), and the imatrix, perplexity and models.toml
    settings. `imatrix_covered` counts the model's tensors the imatrix has entries for;
    `ppl_ctx` is in tokens, and `ppl_chunks` is 0 without `ppl_text`."""

    info: ModelInfo
    types: list[QuantType]
    outputs: list[Path]
    out_dir: Path
    threads: int
    imatrix: Imatrix | None
    imatrix_covered: int
    ppl_text: TokenizedText | None
    ppl_ctx: int
    ppl_chunks: int
    ppl_gpu_layers: int
    models_toml: Path | None
    model_id: str | None
    n_ctx: int | None
    json_path: Path | None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(highlight=False)
    if args.list_types:
        _print_types(console)
        return 0
    try:
        plan = prepare(args)
    except InputError as exc:
        _error(str(exc))
        return 2
    try:
        run(plan, console)
    except InputError as exc:  # models.toml changed under us, etc.
        _error(str(exc))
        return 2
    except RunError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        sys.stdout.flush()
        sys.stderr.flush()
        if any(t.name.startswith("quantize-") and t.is_alive() for t in threading.enumerate()):
            os._exit(130)  # llama.cpp is still running in a thread that cannot be stopped
        return 130
    return 0


def prepare(args: argparse.Namespace) -> Plan:
    """Validate everything; raise `InputError` before anything is written."""
    if args.input is None:
        raise InputError("the input GGUF is required")
    if not args.types:
        raise InputError("--types is required, e.g. --types Q4_K_M,Q8_0 (see --list-types)")
    if args.threads < 1:
        raise InputError("--threads must be at least 1")
    if (args.models_toml is None) != (args.model_id is None):
        raise InputError("--models-toml and --id go together")
    if args.n_ctx is not None and args.models_toml is None:
        raise InputError("--n-ctx is only used with --models-toml")
    if args.n_ctx is not None and args.n_ctx < 1:
        raise InputError("--n-ctx must be positive")

    from .quantize import available_type_names

    try:
        available = available_type_names()
    except ImportError as exc:
        raise InputError(f"llama-cpp-python is not usable here ({exc})") from exc
    types = parse_types(args.types, available)
    info = read_model_info(args.input)
    source = info.source
    if source.needs_flag and not args.allow_requantize:
        raise InputError(
            f"{args.input} is already quantized ({source.label}); quantizing it again adds "
            "the new type's error on top of the old one. Start from the F32/F16/BF16 (or Q8_0) "
            "original, or pass --allow-requantize to do it anyway"
        )

    needs_imatrix = [t.name for t in types if t.needs_imatrix]
    imatrix = None
    covered = 0
    if args.imatrix is not None:
        imatrix = load_imatrix(args.imatrix)
        covered = check_against(imatrix, info.imatrix_sizes)
    elif needs_imatrix:
        raise InputError(
            f"{', '.join(needs_imatrix)} need(s) an importance matrix (llama.cpp refuses these "
            "very low-bit types without one): pass --imatrix FILE, made with llama-imatrix"
        )

    ppl_ctx = DEFAULT_PPL_CTX if args.ppl_ctx is None else args.ppl_ctx
    ppl_chunks = DEFAULT_PPL_CHUNKS if args.ppl_chunks is None else args.ppl_chunks
    ppl_text = None
    if args.ppl_text is not None:
        ppl_text, ppl_chunks = _prepare_ppl(args.input, args.ppl_text, ppl_ctx, ppl_chunks, info)
    elif args.ppl_chunks is not None or args.ppl_ctx is not None:
        raise InputError("--ppl-ctx and --ppl-chunks need --ppl-text")

    if args.models_toml is not None:
        from .models_toml import check_models_toml

        check_models_toml(args.models_toml, args.model_id)

    out_dir = args.out_dir if args.out_dir is not None else args.input.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out-dir {out_dir}: not a directory")
    outputs = [output_path(args.input, out_dir, t) for t in types]
    source_real = args.input.resolve()
    for path in outputs:
        if path.resolve() == source_real:
            raise InputError(f"{path} would overwrite the input; choose another --out-dir")
    _check_space(out_dir, info, types)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out-dir {out_dir}: cannot create: {exc.strerror or exc}") from exc
    if not os.access(out_dir, os.W_OK):
        raise InputError(f"--out-dir {out_dir}: not writable")
    if args.json is not None and not args.json.parent.is_dir():
        raise InputError(f"--json {args.json}: directory {args.json.parent} does not exist")
    return Plan(
        info=info,
        types=types,
        outputs=outputs,
        out_dir=out_dir,
        threads=args.threads,
        imatrix=imatrix,
        imatrix_covered=covered,
        ppl_text=ppl_text,
        ppl_ctx=ppl_ctx,
        ppl_chunks=ppl_chunks if ppl_text is not None else 0,
        ppl_gpu_layers=args.ppl_gpu_layers,
        models_toml=args.models_toml,
        model_id=args.model_id,
        n_ctx=args.n_ctx,
        json_path=args.json,
    )


def _prepare_ppl(
    model: Path, text_path: Path, n_ctx: int, max_chunks: int, info: ModelInfo
) -> tuple[TokenizedText, int]:
    """Tokenize the text with the input's vocabulary; return it and the chunks to score."""
    from .perplexity import chunk_count, read_text, tokenize_text

    if n_ctx < 16 or n_ctx % 2:
        raise InputError("--ppl-ctx must be an even number of at least 16 tokens")
    if info.context_length and n_ctx > info.context_length:
        raise InputError(
            f"--ppl-ctx {n_ctx} exceeds the model's training context ({info.context_length})"
        )
    if max_chunks < 0:
        raise InputError("--ppl-chunks must be 0 (all) or more")
    text = read_text(text_path)
    try:
        tokenized = tokenize_text(model, text)
    except RunError as exc:
        raise InputError(str(exc)) from exc
    if len(tokenized.tokens) < n_ctx:
        raise InputError(
            f"--ppl-text {text_path} is {len(tokenized.tokens)} tokens long; perplexity "
            f"needs at least one chunk of --ppl-ctx {n_ctx} tokens"
        )
    return tokenized, chunk_count(len(tokenized.tokens), n_ctx, max_chunks)


def _check_space(out_dir: Path, info: ModelInfo, types: Sequence[QuantType]) -> None:
    probe = out_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    # Nominal sizes underestimate k-quant mixes a little; only refuse what surely cannot fit.
    need = sum(int(info.n_params * t.bpw / 8) for t in types)
    if need > free:
        raise InputError(
            f"--out-dir {out_dir}: about {need / 2**30:.1f} GiB needed for the outputs, "
            f"{free / 2**30:.1f} GiB free"
        )


def run(plan: Plan, console: Console) -> list[ResultRow]:
    from .perplexity import evaluate
    from .quantize import library_version, quantize_file

    info = plan.info
    console.print(
        f"[bold]{escape(info.path.name)}[/]: {info.source.label}, "
        f"{info.n_params / 1e6:,.1f} M parameters, {mib(info.file_bytes):,.1f} MiB, "
        f"{info.n_tensors} tensors — llama-cpp-python {library_version()}, {plan.threads} thread(s)"
    )
    if plan.imatrix is not None:
        console.print(
            f"importance matrix {escape(plan.imatrix.path.name)}: "
            f"{len(plan.imatrix.entries)} entries, {plan.imatrix_covered} of this model's tensors"
        )
    reference = ResultRow(
        label=info.source.label,
        path=info.path,
        size_bytes=info.file_bytes,
        n_params=info.n_params,
        is_reference=True,
    )
    rows: list[ResultRow] = []
    steps = len(plan.types) + ((len(plan.types) + 1) if plan.ppl_text is not None else 0)
    progress = Progress(
        SpinnerColumn(finished_text="[green]✓[/]"),
        TextColumn("{task.description:<16}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]:<8}"),
        TimeElapsedColumn(),
        TextColumn("[dim]{task.fields[detail]}"),
        console=console,
    )
    with progress:
        overall = progress.add_task("[bold]all steps", total=steps, unit="steps", detail="")
        for qtype, out in zip(plan.types, plan.outputs, strict=True):
            task = progress.add_task(
                f"quantize {qtype.name}", total=info.n_tensors, unit="tensors", detail=""
            )

            def on_tensor(i: int, n: int, name: str, task: TaskID = task) -> None:
                progress.update(task, total=n, completed=i - 1, detail=name)

            outcome = quantize_file(
                info.path,
                out,
                qtype,
                threads=plan.threads,
                allow_requantize=info.source.is_quantized,
                imatrix=plan.imatrix,
                on_tensor=on_tensor,
            )
            size = out.stat().st_size
            row = ResultRow(
                label=qtype.name,
                path=out,
                size_bytes=size,
                n_params=info.n_params,
                seconds=outcome.seconds,
                fallback_tensors=outcome.fallback_tensors,
            )
            rows.append(row)
            progress.update(
                task,
                completed=progress.tasks[task].total,
                detail=f"{mib(size):,.1f} MiB, {row.bpw:.2f} bpw",
            )
            progress.advance(overall)

        if plan.ppl_text is not None:
            scored: list[ResultRow] = []
            for row in [reference, *rows]:
                task = progress.add_task(
                    f"PPL {row.label}", total=plan.ppl_chunks, unit="chunks", detail=""
                )

                def on_chunk(done: int, total: int, task: TaskID = task) -> None:
                    progress.update(task, completed=done)

                result = evaluate(
                    row.path,
                    plan.ppl_text,
                    n_ctx=plan.ppl_ctx,
                    n_chunks=plan.ppl_chunks,
                    threads=plan.threads,
                    gpu_layers=plan.ppl_gpu_layers,
                    on_chunk=on_chunk,
                )
                scored.append(row.with_ppl(result.ppl, result.uncertainty))
                progress.update(task, detail=f"{result.ppl:.3f}")
                progress.advance(overall)
            reference, rows = scored[0], scored[1:]

    table_rows = order_rows([reference, *rows])
    console.print(_table(table_rows, plan))
    for note in _notes(plan, table_rows):
        console.print(f"[dim]{escape(note)}[/]")

    toml_action = None
    if plan.models_toml is not None and plan.model_id is not None:
        toml_action = _write_catalogue(plan, rows[0], reference, console)
    if plan.json_path is not None:
        _write_json(plan, table_rows, toml_action)
    return table_rows


def _table(rows: Sequence[ResultRow], plan: Plan) -> Table:
    with_ppl = plan.ppl_text is not None
    title = "cortex-quantize results"
    if with_ppl:
        title += (
            f" — perplexity on {plan.ppl_chunks}×{plan.ppl_ctx} tokens "
            f"({plan.ppl_chunks * (plan.ppl_ctx // 2 - 1)} scored)"
        )
    table = Table(title=title, title_justify="left")
    table.add_column("type")
    table.add_column("file", overflow="fold")
    table.add_column("size MiB", justify="right")
    table.add_column("bits/weight", justify="right")
    if with_ppl:
        table.add_column("PPL", justify="right")
        table.add_column("±", justify="right")
        table.add_column("Δ PPL", justify="right")
    table.add_column("time", justify="right")
    reference = next((r for r in rows if r.is_reference), None)
    for row in rows:
        cells = [
            f"{row.label} (input)" if row.is_reference else row.label,
            escape(row.path.name),
            f"{row.size_mib:,.1f}",
            f"{row.bpw:.2f}",
        ]
        if with_ppl:
            delta = delta_percent(row.ppl, reference.ppl if reference else None)
            cells += [
                f"{row.ppl:.3f}" if row.ppl is not None else "—",
                f"{row.ppl_uncertainty:.3f}" if row.ppl_uncertainty is not None else "—",
                "—" if row.is_reference or delta is None else f"{delta:+.2f}%",
            ]
        cells.append("—" if row.seconds is None else f"{row.seconds:.1f}s")
        table.add_row(*cells, style="dim" if row.is_reference else None)
    return table


def _notes(plan: Plan, rows: Sequence[ResultRow]) -> list[str]:
    info = plan.info
    notes = [f"bits/weight = file size × 8 / {info.n_params:,} parameters (metadata included)."]
    for row in rows:
        if row.fallback_tensors:
            notes.append(
                f"{row.label}: {row.fallback_tensors} of {info.n_tensors} tensors fell back to "
                "another type (rows not a multiple of the type's block size), so it is larger "
                f"than {row.label} usually is."
            )
    if info.source.is_quantized:
        notes.append(
            f"Requantized from {info.source.label}: quality is bounded by the "
            f"{info.source.label} source."
        )
    if plan.ppl_text is None:
        notes.append("Add --ppl-text FILE (e.g. wiki.test.raw) to compare perplexity.")
    return notes


def _write_catalogue(plan: Plan, chosen: ResultRow, reference: ResultRow, console: Console) -> str:
    from .models_toml import write_models_entry

    assert plan.models_toml is not None and plan.model_id is not None
    comment = (
        f"cortex-quantize: {chosen.label} from {reference.path.name}, "
        f"{chosen.size_mib:,.1f} MiB, {chosen.bpw:.2f} bpw"
    )
    if chosen.ppl is not None and reference.ppl is not None:
        comment += (
            f", PPL {chosen.ppl:.3f} vs {reference.ppl:.3f} ({reference.label}) "
            f"@ {plan.ppl_chunks}x{plan.ppl_ctx} tokens"
        )
    action = write_models_entry(
        plan.models_toml,
        model_id=plan.model_id,
        source=chosen.path.name,
        n_ctx=plan.n_ctx,
        comment=comment,
    )
    console.print(
        f"{plan.models_toml}: {action} [[models]] id = {plan.model_id!r}, "
        f"source = {chosen.path.name!r} (the neuron must have {plan.out_dir} in model_dirs)",
        markup=False,
    )
    return action


def _write_json(plan: Plan, rows: Sequence[ResultRow], toml_action: str | None) -> None:
    assert plan.json_path is not None
    document = {
        "input": {
            "path": str(plan.info.path),
            "type": plan.info.source.label,
            "n_params": plan.info.n_params,
            "n_tensors": plan.info.n_tensors,
        },
        "perplexity": None
        if plan.ppl_text is None
        else {
            "ctx": plan.ppl_ctx,
            "chunks": plan.ppl_chunks,
            "tokens_scored": plan.ppl_chunks * (plan.ppl_ctx // 2 - 1),
        },
        "rows": [
            {
                "type": row.label,
                "reference": row.is_reference,
                "path": str(row.path),
                "size_bytes": row.size_bytes,
                "bits_per_weight": row.bpw,
                "ppl": row.ppl,
                "ppl_uncertainty": row.ppl_uncertainty,
                "seconds": row.seconds,
                "fallback_tensors": row.fallback_tensors,
            }
            for row in rows
        ],
        "models_toml": None
        if toml_action is None
        else {"path": str(plan.models_toml), "id": plan.model_id, "action": toml_action},
    }
    try:
        plan.json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise RunError(f"--json {plan.json_path}: cannot write: {exc.strerror or exc}") from exc


def _print_types(console: Console) -> None:
    from .quantize import available_type_names

    available = set(available_type_names())
    table = Table(title="quantization types", title_justify="left")
    table.add_column("type")
    table.add_column("bits/weight", justify="right")
    table.add_column("imatrix")
    table.add_column("")
    for qtype in QUANT_TYPES:
        if qtype.name in available:
            table.add_row(
                qtype.name,
                f"{qtype.bpw:.2f}",
                "required" if qtype.needs_imatrix else "optional",
                qtype.summary,
            )
    console.print(table)
    console.print("[dim]bits/weight: the main tensor type's; mixes and small models run higher.")


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)

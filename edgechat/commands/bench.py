"""`edgechat bench` and `edgechat kv-eval`: thin commands plus their views (rich tables, the PNG).

The measuring lives in edgechat/bench.py and kv_eval.py, imported inside the commands so
`edgechat --help` and `generate` stay fast.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import EdgechatError
from .common import (
    BudgetOpt,
    CtxOpt,
    FaOpt,
    GpuOpt,
    JsonOpt,
    ModelOpt,
    RpcOpt,
    RpcPublicOpt,
    ThreadsOpt,
    engine_options,
    guarded,
    runtime,
)

if TYPE_CHECKING:
    from ..bench import BenchReport, KvSpec, LoadedModel, OpenEngine
    from ..kv_eval import KvEvalReport

MIB = float(1 << 20)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
    app.command("kv-eval")(kv_eval)


# commands -------------------------------------------------------------------------------


@guarded
def bench(
    model: ModelOpt = None,
    kv_types: Annotated[
        str, typer.Option("--kv-types", help="Comma-separated KV types to compare; K/V pairs like q4_0/f16 too.")
    ] = "f16,q8_0,q4_0",
    ctx: CtxOpt = None,
    lengths: Annotated[
        str | None,
        typer.Option("--lengths", help="Prompt lengths in tokens (default: 128, 512 and min(ctx-256, 2048))."),
    ] = None,
    gen_tokens: Annotated[int, typer.Option("--gen-tokens", help="Tokens generated per run.", min=2)] = 32,
    repeats: Annotated[int, typer.Option("--repeats", help="Runs per prompt length; figures are medians.", min=1)] = 1,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG of TTFT and memory against prompt length.")
    ] = None,
    threads: ThreadsOpt = None,
    gpu_layers: GpuOpt = None,
    flash_attn: FaOpt = None,
    budget_mb: BudgetOpt = None,
    json_out: JsonOpt = False,
    rpc: RpcOpt = None,
    rpc_allow_public: RpcPublicOpt = False,
) -> None:
    """Time TTFT, prefill, decode, memory and resume for each KV cache type, against a bare llama.cpp loop."""
    from ..bench import BenchConfig, parse_kv_types, run_bench, step_count

    if plot is not None:
        _require_matplotlib()
    config = BenchConfig(
        kv_types=parse_kv_types(kv_types), n_ctx=ctx, lengths=_parse_lengths(lengths),
        repeats=repeats, gen_tokens=gen_tokens,
    )  # fmt: skip
    opener = _opener(model, flash_attn, gpu_layers, threads, budget_mb, rpc, rpc_allow_public)
    with _progress(step_count(config)) as step:
        report = run_bench(opener, config, step)
    if plot is not None:
        write_plot(report, plot)
    if json_out:
        print(json.dumps(asdict(report)))
        return
    from rich.console import Console

    console = Console()
    for renderable in bench_tables(report):
        console.print(renderable)
    if plot is not None:
        console.print(f"plot: {plot}")


@guarded
def kv_eval(
    model: ModelOpt = None,
    text: Annotated[
        Path | None, typer.Option("--text", help="UTF-8 text to score (default: the bundled sample text).")
    ] = None,
    kv_types: Annotated[
        str, typer.Option("--kv-types", help="Cache types to compare with f16; K/V pairs like q4_0/f16 too.")
    ] = "q8_0,q4_0",
    tokens: Annotated[int, typer.Option("--tokens", help="Tokens of the text to score.", min=16)] = 1024,
    threads: ThreadsOpt = None,
    gpu_layers: GpuOpt = None,
    flash_attn: Annotated[
        str,
        typer.Option("--flash-attn", help="on (default: every cache alike, so only the KV type differs), off or auto."),
    ] = "on",
    json_out: JsonOpt = False,
    rpc: RpcOpt = None,
    rpc_allow_public: RpcPublicOpt = False,
) -> None:
    """Perplexity, KL divergence and top-1 agreement of quantized KV caches against an f16 cache."""
    from ..bench import load_text, parse_kv_types
    from ..kv_eval import run_kv_eval

    specs = parse_kv_types(kv_types)
    content, source = load_text(text)
    opener = _opener(model, flash_attn, gpu_layers, threads, None, rpc, rpc_allow_public)
    with _progress(None) as step:
        report = run_kv_eval(opener, specs, content, source, tokens, step)
    if json_out:
        print(json.dumps(asdict(report)))
        return
    from rich.console import Console

    Console().print(kv_eval_table(report))


# plumbing -------------------------------------------------------------------------------


def _opener(
    model: str | None,
    flash_attn: str | None,
    gpu_layers: str | None,
    threads: int | None,
    budget_mb: int | None,
    rpc: str | None = None,
    rpc_allow_public: bool = False,
) -> OpenEngine:
    """Engines come from the same Runtime path as chat: registry names, planner, fingerprint."""

    @contextlib.contextmanager
    def open_engine(spec: KvSpec, n_ctx: int | None) -> Iterator[LoadedModel]:
        from ..bench import LoadedModel
        from ..state import model_fingerprint

        with runtime(
            engine_options(
                model,
                n_ctx,
                None,
                spec.type_k,
                spec.type_v,
                flash_attn,
                gpu_layers,
                threads,
                budget_mb,
                rpc=rpc,
                rpc_allow_public=rpc_allow_public,
            )
        ) as rt:
            engine = rt.load()
            sha = model_fingerprint(Path(engine.settings.model_path), rt.paths.fingerprint_cache)
            yield LoadedModel(engine, rt.model_name, sha)

    return open_engine


def _parse_lengths(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise EdgechatError(
            f"--lengths {text!r} is not a list of token counts", "e.g. --lengths 128,512,2048"
        ) from None


@contextlib.contextmanager
def _progress(total: int | None) -> Iterator[Callable[[str], None]]:
    """A rich progress bar on stderr (stdout stays clean for --json); plain lines when not a terminal."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda desc: print(f"… {desc}", file=sys.stderr, flush=True)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()]
    if total:
        columns.insert(3, MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("starting", total=total)
        started = False

        def step(desc: str) -> None:
            nonlocal started
            if started:
                bar.advance(task)
            started = True
            bar.update(task, description=desc)

        yield step


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EdgechatError("--plot needs matplotlib, which is not installed", "pip install 'edgechat[plot]'") from None


# views ----------------------------------------------------------------------------------


def _mib(n: int | None) -> str:
    return "–" if n is None else f"{n / MIB:,.1f}"


def _threads(report: BenchReport) -> str:
    from ..threads import ThreadChoice

    label = ThreadChoice(report.threads, report.threads_batch, report.threads_auto).label()
    return label if not report.threads_auto else f"{label} (chosen from the load)"


def bench_tables(report: BenchReport) -> list[Any]:
    """The header line and three tables: per prompt, resume vs re-prefill, runtime vs bare loop."""
    from rich.table import Table

    m = report.machine
    header = (
        f"[bold]{report.model}[/] ({Path(report.model_file).name}, sha256 {report.model_sha256[:12]}) · "
        f"{report.llama_build} · {_threads(report)} · {report.gpu_layers} GPU layers · n_ctx {report.n_ctx}\n"
        f"{m.processor}, {m.cpu_count_logical} CPUs, {m.ram_total_bytes / (1 << 30):.1f} GiB RAM"
        f"{', ' + ', '.join(m.gpus) if m.gpus else ''} · {report.repeats} repeat(s), "
        f"{report.gen_tokens} generated tokens, medians"
    )
    has_gpu = any(p.vram_used_bytes is not None for r in report.results for p in r.prompts)
    runs = Table(title="per prompt length", title_justify="left")
    cols = ["KV", "prompt", "TTFT s", "prefill t/s", "decode t/s", "p50 ms", "p95 ms", "KV MiB", "RSS pre MiB",
            "RSS peak MiB"] + (["VRAM MiB"] if has_gpu else [])  # fmt: skip
    for col in cols:
        runs.add_column(col, justify="left" if col == "KV" else "right")
    for r in report.results:
        for i, p in enumerate(r.prompts):
            row = [
                r.kv_type if i == 0 else "", str(p.prompt_tokens), f"{p.ttft_s:.3f}",
                f"{p.prefill_tokens_per_s:.0f}", f"{p.decode_tokens_per_s:.1f}", f"{p.latency_p50_ms:.1f}",
                f"{p.latency_p95_ms:.1f}", _mib(p.kv_bytes), _mib(p.rss_after_prefill_bytes),
                _mib(p.rss_peak_decode_bytes),
            ]  # fmt: skip
            if has_gpu:
                row.append(_mib(p.vram_used_bytes))
            runs.add_row(*row, end_section=i == len(r.prompts) - 1)
    load = Table(title="load; resume from a saved state vs re-prefill (TTFT)", title_justify="left")
    for col in ("KV", "FA", "load s", "RSS MiB load", "prompt", "state MiB", "save ms", "restore ms",
                "resume s", "re-prefill s", "speedup"):  # fmt: skip
        load.add_column(col, justify="left" if col == "KV" else "right")
    for r in report.results:
        s = r.resume
        load.add_row(
            r.kv_type, "on" if r.flash_attn else "off", f"{r.load_s:.2f}",
            f"{r.before_load.rss_bytes / MIB:.0f}→{r.after_load.rss_bytes / MIB:.0f}", str(s.prompt_tokens), _mib(s.state_bytes), f"{s.save_s * 1e3:.1f}",
            f"{s.load_s * 1e3:.1f}", f"{s.resume_ttft_s:.3f}", f"{s.reprefill_ttft_s:.3f}",
            f"{s.speedup:.0f}×" + ("" if s.same_first_token else " (!)"),
        )  # fmt: skip
    base = Table(title="runtime vs a bare Llama.generate loop, same context and sampler", title_justify="left")
    for col in ("KV", "prompt", "bare TTFT s", "runtime TTFT s", "TTFT ratio", "bare decode t/s",
                "runtime decode t/s", "decode time ratio"):  # fmt: skip
        base.add_column(col, justify="left" if col == "KV" else "right")
    for r in report.results:
        b = r.baseline
        rt = next(p for p in r.prompts if p.prompt_tokens == b.prompt_tokens)
        base.add_row(
            r.kv_type, str(b.prompt_tokens), f"{b.ttft_s:.3f}", f"{rt.ttft_s:.3f}", f"{b.ttft_ratio:.3f}",
            f"{b.decode_tokens_per_s:.1f}", f"{rt.decode_tokens_per_s:.1f}", f"{b.decode_time_ratio:.3f}",
        )  # fmt: skip
    notes = (
        "[dim]FA: flash attention. Ratios are runtime / bare (above 1: the runtime is slower). "
        "(!) marks a restored cache whose first token differs from the live cache's (same one-token path).[/]"
    )
    return [header, runs, load, base, notes]


def kv_eval_table(report: KvEvalReport) -> Any:
    from rich.table import Table

    table = Table(
        title=(
            f"{report.model}: {report.scored_positions} positions of {report.text_source}, "
            f"flash attention {'on' if report.flash_attn else 'off'}, reference f16 cache"
        ),
        title_justify="left",
    )
    for col in ("KV (K/V)", "PPL", "PPL vs f16", "KL mean", "KL median", "KL p99", "KL max", "top-1 agree"):
        table.add_column(col, justify="left" if col.startswith("KV") else "right")
    for i, q in enumerate((report.reference, *report.results)):
        table.add_row(
            "f16 (reference)" if i == 0 else q.kv_type, f"{q.perplexity:.3f}", f"{(q.ppl_ratio - 1) * 100:+.2f} %", f"{q.kl_mean:.5f}",
            f"{q.kl_median:.5f}", f"{q.kl_p99:.4f}", f"{q.kl_max:.4f}", f"{q.top1_agreement * 100:.1f} %",
        )  # fmt: skip
    return table


def write_plot(report: BenchReport, path: Path) -> None:
    """TTFT, KV cache size and process memory against prompt length, one colour per KV type.

    Three panels rather than one memory axis: the KV cache of a small model is a few MiB
    next to ~200 MiB of RSS, and would be a flat line at the bottom of a shared axis.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_kv, ax_m) = plt.subplots(1, 3, figsize=(15, 4.8), constrained_layout=True)
    colours = plt.get_cmap("tab10")
    has_gpu = False
    for i, r in enumerate(report.results):
        xs = [p.prompt_tokens for p in r.prompts]
        style = {"color": colours(i), "lw": 2, "marker": "o", "label": r.kv_type}
        ax_t.plot(xs, [p.ttft_s for p in r.prompts], **style)
        ax_kv.plot(xs, [p.kv_bytes / MIB for p in r.prompts], **style)
        base = r.before_load.rss_bytes
        ax_m.plot(xs, [(p.rss_peak_decode_bytes - base) / MIB for p in r.prompts], **style)
        vram = [p.vram_used_bytes for p in r.prompts]
        if all(v is not None for v in vram):
            has_gpu = True
            v0 = r.before_load.vram_used_bytes or 0
            ax_m.plot(xs, [((v or 0) - v0) / MIB for v in vram], color=colours(i), lw=1.5, ls=":", marker="^")
    ax_t.set_title("time to first token, cleared cache")
    ax_t.set_ylabel("seconds")
    ax_kv.set_title("KV cache holding the prompt")
    ax_kv.set_ylabel("MiB")
    # Above the pre-load level: what this model and cache added, not what earlier KV types left behind.
    ax_m.set_title("peak RSS while decoding, above RSS before load" + (" (dotted: VRAM)" if has_gpu else ""))
    ax_m.set_ylabel("MiB")
    ticks = [p.prompt_tokens for p in report.results[0].prompts]
    for ax in (ax_t, ax_kv, ax_m):
        ax.set_xlabel("prompt length (tokens)")
        ax.set_xticks(ticks)
        ax.grid(True, alpha=0.3)
    ax_t.set_ylim(bottom=0)
    ax_kv.set_ylim(bottom=0)
    ax_m.set_ylim(bottom=0)
    ax_t.legend(title="KV cache", loc="upper left")
    fig.suptitle(
        f"{report.model} · {report.llama_build} · {_threads(report)} · {report.gpu_layers} GPU layers · "
        f"n_ctx {report.n_ctx} · {report.machine.processor}, {report.machine.cpu_count_logical} CPUs · "
        f"median of {report.repeats} run(s)",
        fontsize=10,
    )
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise EdgechatError(f"cannot write the plot to {path}: {exc.strerror}", "check the --plot path") from exc
    finally:
        plt.close(fig)

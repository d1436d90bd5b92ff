"""Check the planner and the VRAM probe against llama.cpp on a GPU machine.

The test models are too big to ship to a GPU box with no network, so this clones them:
`spec` records a model's metadata (tokenizer included) and tensor list, `clone` writes a
GGUF with the same tensors filled with random bytes (same sizes, same llama.cpp buffers,
meaningless output). `check` loads every clone under several offload settings with a
CUDA build of llama-cpp-python and compares the CUDA0/host buffers llama.cpp logs with
planner.estimate(), and what NVML / ggml report before and after.

    python scripts/gpu_check.py spec .models/X.gguf .whl/X.spec.json.gz    # here
    python scripts/gpu_check.py clone .whl/X.spec.json.gz /tmp/m/X.gguf     # there
    python scripts/gpu_check.py check /tmp/m "$OUT"                          # there
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MiB = 1024 * 1024


def spec(model: Path, out: Path) -> None:
    """Metadata and tensor list of a GGUF, enough to rebuild it with other weights."""
    from gguf import GGUFReader

    reader = GGUFReader(model)
    kvs = []
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        vtype = int(field.types[0])
        sub = int(field.types[1]) if len(field.types) > 1 else None
        value = field.contents()
        kvs.append([field.name, vtype, sub, value])
    arch = reader.fields["general.architecture"].contents()
    tensors = [[t.name, [int(d) for d in t.shape], int(t.tensor_type)] for t in reader.tensors]
    with gzip.open(out, "wt") as fh:
        json.dump({"arch": arch, "kv": kvs, "tensors": tensors}, fh)


def clone(spec_path: Path, out: Path) -> None:
    """A GGUF with the spec's metadata and random weights of the same types and shapes."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter

    with gzip.open(spec_path, "rt") as fh:
        data = json.load(fh)
    rng = np.random.default_rng(0)
    writer = GGUFWriter(out, data["arch"])
    for key, vtype, sub, value in data["kv"]:
        writer.add_key_value(key, value, GGUFValueType(vtype), GGUFValueType(sub) if sub is not None else None)
    for name, ne, type_id in data["tensors"]:
        qtype = GGMLQuantizationType(type_id)
        shape = list(reversed(ne))  # numpy order: ne0 is the innermost dimension
        if qtype == GGMLQuantizationType.F32:
            writer.add_tensor(name, np.ones(shape, dtype=np.float32))
        elif qtype == GGMLQuantizationType.F16:
            writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float16))
        else:
            blck, size = GGML_QUANT_SIZES[qtype]
            byte_shape = [*shape[:-1], shape[-1] // blck * size]
            # Bytes below 0x3C keep every f16 scale finite and under 1.
            raw = rng.integers(0, 0x3C, size=byte_shape, dtype=np.uint8)
            writer.add_tensor(name, raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _vram_used(snapshot: Any) -> int | None:
    return snapshot.gpus[0].used if snapshot.gpus else None


def check(models_dir: Path, out_dir: Path) -> None:
    from edgechat import memory, planner
    from edgechat.config import EngineSettings
    from edgechat.engine import Engine, logged_buffers, supports_gpu_offload
    from edgechat.gguf_info import read_gguf

    result: dict[str, Any] = {
        "gpu_offload": supports_gpu_offload(),
        "probe_nvml": [asdict(g) for g in memory._nvml_gpus()],
        "probe_ggml": [asdict(g) for g in memory._ggml_gpus()],
        "probe": asdict(memory.probe()),
        "runs": [],
    }
    for model in sorted(models_dir.glob("*.gguf")):
        info = read_gguf(model)
        n = info.n_layer
        configs: list[dict[str, Any]] = [
            {"gpu_layers": g, "type_k": "f16", "type_v": "f16", "n_ctx": 2048} for g in (0, 1, n // 2, n, n + 1)
        ]
        configs += [{"gpu_layers": g, "type_k": "q8_0", "type_v": "q8_0", "n_ctx": 2048} for g in (0, n // 2, n + 1)]
        configs += [
            {"gpu_layers": n + 1, "type_k": "f16", "type_v": "f16", "n_ctx": 8192},
            {"gpu_layers": n + 1, "type_k": "q4_0", "type_v": "q4_0", "n_ctx": 8192},
        ]
        if info.sliding_window:
            configs.append({"gpu_layers": n + 1, "type_k": "f16", "type_v": "f16", "n_ctx": 8192, "swa_full": False})
        live = memory.probe()
        auto = planner.plan(info, snapshot=live)
        configs.append({"auto": True, **asdict(auto.engine_settings(model))})
        # --gpu-layers auto when the card is nearly full: pretend only the margin plus half
        # of what a full offload needs is free, so the planner must split the layers.
        tight: planner.Plan | None = None
        if live.gpus:
            g0 = live.gpus[0]
            margin = max(planner.VRAM_MARGIN, int(planner.VRAM_MARGIN_SHARE * g0.total))
            need = planner.estimate_settings(auto.engine_settings(model), info).total_gpu
            fake = replace(g0, free=margin + need // 2)
            tight = planner.plan(info, snapshot=replace(live, gpus=(fake,)), n_ctx=auto.n_ctx)
            configs.append({"auto": True, "tight": need // 2, **asdict(tight.engine_settings(model))})
        for cfg in configs:
            settings_kw = {k: v for k, v in cfg.items() if k not in ("auto", "tight", "model_path")}
            settings = EngineSettings(model_path=str(model), **settings_kw)
            gc.collect()
            before = memory.probe()
            t0 = time.perf_counter()
            engine = Engine(settings)
            load_s = time.perf_counter() - t0
            logged = {k: round(v, 2) for k, v in logged_buffers().items()}
            loaded = memory.probe()
            t0 = time.perf_counter()
            engine.eval(list(range(10, 10 + min(512, settings.n_ctx - 1))))
            eval_s = time.perf_counter() - t0
            after = memory.probe()
            engine.close()
            del engine
            est = planner.estimate_settings(settings, info)
            vb, vl, va = _vram_used(before), _vram_used(loaded), _vram_used(after)
            run = {
                "model": info.name,
                "config": settings_kw,
                "auto": bool(cfg.get("auto")),
                "load_s": round(load_s, 2),
                "eval512_s": round(eval_s, 2),
                "logged_mib": logged,
                "predicted_mib": {
                    k: round(v / MiB, 2)
                    for k, v in asdict(est).items()
                    if k.startswith(("weights", "kv_", "compute", "output", "total")) or k == "kv"
                },
                "vram_used_mib": {
                    "before": vb and vb // MiB,
                    "loaded": vl and vl // MiB,
                    "after_eval": va and va // MiB,
                },
                "rss_mib": {"before": before.process_rss // MiB, "after_eval": after.process_rss // MiB},
            }
            if cfg.get("tight") and tight is not None:
                # What the planner was told it may use on the GPU, against what the load took.
                run["tight_gpu_budget_mib"] = cfg["tight"] // MiB
                run["vram_delta_mib"] = (va - vb) // MiB if va is not None and vb is not None else None
                run["plan_reasons"] = list(tight.reasons)
            elif cfg.get("auto"):
                run["plan_reasons"] = list(auto.reasons)
            result["runs"].append(run)
            _print_run(run)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(json.dumps(result, indent=1))


def _print_run(run: dict[str, Any]) -> None:
    c, lg, pr, v = run["config"], run["logged_mib"], run["predicted_mib"], run["vram_used_mib"]
    gpu_logged = {k: x for k, x in lg.items() if "CUDA0" in k}
    print(
        f"{run['model'][:14]:14} g={c.get('gpu_layers')} {c.get('type_k')} ctx={c.get('n_ctx')} "
        f"swa_full={c.get('swa_full', True)} auto={run['auto']} | logged GPU {gpu_logged} | "
        f"pred w_gpu {pr['weights_gpu']} kv_gpu {pr['kv_gpu']} c_gpu {pr['compute_gpu']} c_cpu {pr['compute_cpu']} | "
        f"kv {pr['kv']}/{lg['KV']} | VRAM used {v} | load {run['load_s']}s eval {run['eval512_s']}s",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("spec")
    a.add_argument("model", type=Path)
    a.add_argument("out", type=Path)
    a = sub.add_parser("clone")
    a.add_argument("spec", type=Path)
    a.add_argument("out", type=Path)
    a = sub.add_parser("check")
    a.add_argument("models_dir", type=Path)
    a.add_argument("out_dir", type=Path)
    args = ap.parse_args()
    if args.cmd == "spec":
        spec(args.model, args.out)
    elif args.cmd == "clone":
        clone(args.spec, args.out)
    else:
        check(args.models_dir, args.out_dir)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""The GPU check (issue 7, point 10): what only a GPU can tell, in one run of under 8 minutes.

1. the tests of the CUDA branches: bitmask apply on the GPU against the CPU, masks overlapped with the
   forward pass on the GPU giving the same tokens as masks after it, bfloat16 as the default on a GPU
   (`tests/test_backend_transformers.py`, skipped without CUDA);
2. bfloat16 loading of the tiny model on the GPU: dtype chosen, load and first constrained judgment times;
3. the constrained-vs-free benchmark (`benchmarks/constrained.py`) on the 150k-wide model at batch 1 and 16,
   every installed engine but outlines-core (its compile at 150k tokens alone can take minutes).

Figures go to `gpu_check.md` and `gpu_check.json` in `--out` (default `$OUT`, else a new temporary
directory). Without CUDA (or with `--dry-run`) it runs what a CPU can quickly (the same tests, which then
skip; bfloat16 loading on the CPU; the benchmark on the tiny model, one short run) and lists what it
skipped; the exit status is 0 when every step that ran passed. Run it through `benchmarks/gpu_check.sh`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = {"tests": 150, "bf16": 90, "benchmark": 330}
"""Per step, within the 8 minutes (the benchmark builds a 150k-token model of 1024 x 4 layers first)."""


def _run(command: list[str], limit: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=ROOT, timeout=limit, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else ""
        return {"ok": False, "seconds": limit, "error": f"over its {limit:.0f} s budget", "stdout": out}
    result = {"ok": done.returncode == 0, "seconds": time.perf_counter() - start, "stdout": done.stdout}
    if done.returncode != 0:
        result["error"] = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        result["stderr_tail"] = done.stderr[-3000:]
    return result


def _tests(cuda: bool) -> dict[str, Any]:
    selection = "cuda or bfloat16 or default_to_the_machine"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"]
    command += ["tests/test_backend_transformers.py", "-k", selection]
    result = _run(command, BUDGET_S["tests"])
    lines = [line for line in result.get("stdout", "").splitlines() if line.strip()]
    result["summary"] = lines[-1] if lines else ""
    result["skipped"] = [line for line in lines if line.startswith("SKIPPED")]
    result["ok"] = result["ok"] and (not cuda or not result["skipped"])  # on a GPU nothing may skip
    return result


_BF16_CODE = """
import asyncio, json, sys, tempfile, time
from PIL import Image
from flexjudge.backends.base import Constraint, ImagePart, Message, Request, TextPart
from flexjudge.backends.tiny import build_tiny_model
from flexjudge.backends.transformers import TransformersBackend
from flexjudge.constraints import pair_constraint

device, dtype = sys.argv[1], (None if sys.argv[2] == "auto" else sys.argv[2])
budget = int(sys.argv[3])
with tempfile.TemporaryDirectory() as scratch:
    directory = build_tiny_model(f"{scratch}/tiny", seed=0)
    start = time.perf_counter()
    backend = TransformersBackend(directory, device=device, dtype=dtype)
    load_s = time.perf_counter() - start
    images = (ImagePart(Image.new("RGB", (64, 48), "red")), ImagePart(Image.new("RGB", (48, 64), "teal")))
    request = Request(
        messages=(Message("user", (TextPart("a red fox"), *images)),),
        constraint=Constraint(schema=pair_constraint("image", "flex", max_string_length=8)),
        max_new_tokens=budget,
    )
    start = time.perf_counter()
    (generation,) = asyncio.run(backend.generate([request]))
    judge_s = time.perf_counter() - start
    if generation.finish_reason == "stop":
        json.loads(generation.text)  # a whole judgment must be valid JSON
    weights = next(backend._model.parameters())
    print(json.dumps({
        "device": str(weights.device), "dtype": str(weights.dtype).removeprefix("torch."),
        "load_s": load_s, "first_judgment_s": judge_s, "tokens": generation.usage.completion_tokens,
        "finish_reason": generation.finish_reason, "engine": generation.engine,
        "overlap_masks": backend.overlap_masks,
    }))
"""


def _bf16(cuda: bool) -> dict[str, Any]:
    # On a GPU the automatic dtype is what is checked, over a whole judgment; on the CPU bfloat16 is asked
    # for explicitly and a few dozen tokens show it decodes (bf16 matrix work is slow on a CPU).
    device, dtype, tokens = ("cuda", "auto", "1500") if cuda else ("cpu", "bfloat16", "48")
    result = _run([sys.executable, "-c", _BF16_CODE, device, dtype, tokens], BUDGET_S["bf16"])
    if result["ok"]:
        result["figures"] = json.loads(result["stdout"].strip().splitlines()[-1])
        result["ok"] = result["figures"]["dtype"] == "bfloat16"
        if not result["ok"]:
            result["error"] = f"loaded as {result['figures']['dtype']}, not bfloat16"
    return result


def _benchmark(cuda: bool, out: Path, engines: list[str]) -> dict[str, Any]:
    record = out / "constrained.md"
    record.unlink(missing_ok=True)  # the benchmark appends: a rerun into the same folder starts afresh
    command = [sys.executable, str(ROOT / "benchmarks" / "constrained.py"), "--record", str(record)]
    if cuda:
        command += ["--models", "150k-wide", "--device", "cuda", "--batches", "1,16"]
        command += ["--tokens", "128", "--repeat", "3"]
    else:
        command += ["--models", "tiny", "--device", "cpu", "--batches", "1", "--quick"]
    command += ["--engines", ",".join(engines)]
    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ, FLEXJUDGE_CACHE_DIR=scratch)
        result = _run(command, BUDGET_S["benchmark"], env)
    table = record.read_text(encoding="utf-8") if record.is_file() else ""
    result["table"] = table
    if result["ok"] and "error:" in table:
        result["ok"], result["error"] = False, "an engine failed (see the table)"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=os.environ.get("OUT") or None, help="where the figures go")
    parser.add_argument("--dry-run", action="store_true", help="the CPU-possible parts only, quickly")
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="flexjudge-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from flexjudge.backends.engines import available_engines

    cuda = torch.cuda.is_available() and not args.dry_run
    why = "--dry-run" if args.dry_run else "no CUDA device"
    engines = [e for e in available_engines() if e != "outlines_core"] if cuda else available_engines()[:1]
    started = time.perf_counter()
    steps: dict[str, dict[str, Any]] = {}
    for name, step in (
        ("tests", lambda: _tests(cuda)),
        ("bf16", lambda: _bf16(cuda)),
        ("benchmark", lambda: _benchmark(cuda, out, engines)),
    ):
        steps[name] = step()
        state = "ok" if steps[name]["ok"] else f"FAILED: {steps[name].get('error')}"
        print(f"{name}: {state} ({steps[name]['seconds']:.1f} s)", file=sys.stderr)
    skipped = (
        []
        if cuda
        else [
            f"CUDA tests ran but skipped ({why})",
            "bfloat16 chosen automatically on a GPU: loaded explicitly on the CPU instead",
            "constrained vs free on the 150k-wide model at batch 1 and 16 on the GPU: the tiny model, "
            "batch 1, one short run on the CPU instead",
        ]
    )
    report = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "gpu" if cuda else f"dry run ({why})",
        "machine": f"{platform.platform()}; {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "bf16_supported": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
        "engines": engines,
        "seconds": time.perf_counter() - started,
        "skipped": skipped,
        "steps": {name: _brief(step) for name, step in steps.items()},
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "gpu_check.md").write_text(_markdown(report, steps), encoding="utf-8")
    print(_markdown(report, steps))
    print(f"figures written to {out}", file=sys.stderr)
    sys.exit(0 if all(s["ok"] for s in steps.values()) else 1)


def _brief(step: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in step.items() if key not in ("stdout", "table")}


def _markdown(report: dict[str, Any], steps: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"## gpu_check ({report['date'][:10]})",
        "",
        f"{report['date']}; {report['mode']}; {report['machine']}; torch {report['torch']}; "
        f"GPU {report['gpu'] or 'none'} (bf16: {report['bf16_supported']}); "
        f"engines {', '.join(report['engines'])}; {report['seconds']:.0f} s in all",
        "",
        f"- CUDA-branch tests: {'ok' if steps['tests']['ok'] else 'FAILED'}: "
        + steps["tests"].get("summary", ""),
    ]
    bf16 = steps["bf16"]
    if "figures" in bf16:
        f = bf16["figures"]
        lines.append(
            f"- bf16 load: {f['dtype']} on {f['device']}, loaded in {f['load_s']:.2f} s, first constrained "
            f"judgment {f['first_judgment_s']:.2f} s ({f['tokens']} tokens, {f['finish_reason']}, "
            f"{f['engine']}, overlap {f['overlap_masks']})"
        )
    else:
        lines.append(f"- bf16 load: FAILED: {bf16.get('error')}")
    state = "ok" if steps["benchmark"]["ok"] else f"FAILED: {steps['benchmark'].get('error')}"
    lines += [f"- constrained vs free: {state} ({steps['benchmark']['seconds']:.0f} s)"]
    lines += [f"- skipped: {s}" for s in report["skipped"]]
    table = steps["benchmark"].get("table", "").strip()
    if table:
        lines += ["", table.replace("## constrained", "### constrained", 1)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

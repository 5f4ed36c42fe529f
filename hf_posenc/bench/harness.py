"""Speed and memory of every encoding against the unpatched model: `hf-posenc bench`, `benchmarks/run.py`.

Method:

* Models are built from configs with random weights (MiniLM, BERT-base and BART-base shapes); the baseline is the
  unpatched model with transformers' SDPA attention and its learned absolute table. Attention dropout is 0 in every
  model (with dropout > 0 torch's CPU SDPA leaves its fused kernel for every model, the baseline included); hidden
  dropout keeps its default. Inputs have no padding.
* `forward` is one `model(**inputs)` under `torch.no_grad()` in eval mode; `train` is forward + backward of the mean
  square of the last hidden state in train mode.
* Time ratios come from one process: all models of a configuration are built, then timed in interleaved rounds (the
  order rotates each round); each round gives one ratio per encoding (its time over the baseline's in that round) and
  the reported ratio is the median of those paired ratios, which slow drifts of a shared machine's load cancel out of.
* On a GPU (`--preset gpu`: bf16, CUDA), each step ends with `torch.cuda.synchronize()`, peak memory is
  `torch.cuda.max_memory_allocated` in the same process (the allocator's statistics reset per measurement), and one
  profiled step per model records which SDPA kernel (flash, memory-efficient, cuDNN, math) its attention reached.
* On the CPU, peak memory comes from a fresh process per configuration and encoding: `VmHWM` (the peak resident set,
  from /proc/self/status; `ru_maxrss` would keep the forked parent's peak across exec) after two steps, and the same
  minus the resident set just before the first step (the step's own memory: activations, saved tensors, gradients,
  transient buffers; it excludes the interpreter, the libraries, the weights and the inputs).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import patch_model, unpatch_model
from ..hub.provenance import environment
from .grid import BERT_ENCODINGS, SHAPES, Case, Grid
from .report import BASELINE, check_targets, config_key, render_markdown

# ---------------------------------------------------------------------------------------------------------------------
# Models and steps
# ---------------------------------------------------------------------------------------------------------------------


def build_model(shape: str, encoding: str | None, length: int, device: str = "cpu", dtype: str = "float32"):
    """A randomly initialized model of `shape`, patched with `encoding` (None: the unpatched baseline).

    The baseline and `learned` get a learned table of max(trained_length, length) rows (as if extended), and so does
    `none`, which replaces BART's decoder table only; the other encodings are patched into a model with the shape's
    trained length, as a real checkpoint would be. The model is built on `device` and cast to `dtype`.
    """
    import torch
    import transformers

    spec = SHAPES[shape]
    table = max(spec.trained_length, length) if encoding in (None, "learned", "none") else spec.trained_length
    torch.manual_seed(0)
    with torch.device(device):  # initialize where the model runs (much faster on a GPU than building on the CPU)
        if spec.family == "bart":
            config = transformers.BartConfig(**spec.config, max_position_embeddings=table, attention_dropout=0.0)
            model = transformers.BartModel(config)
        else:
            config = transformers.BertConfig(
                **spec.config, max_position_embeddings=table, attention_probs_dropout_prob=0.0
            )
            model = transformers.BertModel(config, add_pooling_layer=False)
    model.to(getattr(torch, dtype))
    model.set_attn_implementation("sdpa")
    if encoding == "none":
        patch_model(model, decoder="none")
    elif encoding is not None:
        patch_model(model, encoding)
    return model


def make_inputs(shape: str, batch: int, length: int, device: str = "cpu") -> dict[str, Any]:
    """Random token ids without padding (BART: the decoder gets as many tokens as the encoder)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 30000, (batch, length), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if SHAPES[shape].family == "bart":
        inputs["decoder_input_ids"] = torch.randint(5, 30000, (batch, length), generator=generator)
    return {name: tensor.to(device) for name, tensor in inputs.items()}


def make_step(model, inputs: dict[str, Any], mode: str) -> Callable[[], None]:
    """One timed unit of work: an inference forward, or a training forward + backward (finished on a GPU too)."""
    import torch

    model.train(mode == "train")
    on_gpu = next(model.parameters()).is_cuda

    def forward() -> None:
        with torch.no_grad():
            model(**inputs)
        if on_gpu:
            torch.cuda.synchronize()

    def train() -> None:
        hidden = model(**inputs).last_hidden_state
        hidden.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        if on_gpu:
            torch.cuda.synchronize()

    return train if mode == "train" else forward


SDPA_KERNELS = {
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_flash_attention_for_cpu": "flash (cpu)",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_cudnn_attention": "cudnn",
    "_scaled_dot_product_fused_attention_overrideable": "fused",
    "_scaled_dot_product_attention_math": "math",
}
"""The aten operators SDPA dispatches to, by the kernel each stands for; a fused kernel's backward is the same name
with `_backward`. The math kernel has no backward operator of its own (autograd differentiates its operations)."""


def sdpa_kernels(step: Callable[[], None]) -> dict[str, str]:
    """Which SDPA kernels one run of `step` reached, read off the profiler's operator names.

    Returns `{"forward": ..., "backward": ...}`; the backward is "-" for an inference step, "autograd" when the math
    kernel ran (its operations are differentiated one by one) and "recompute" when a fused forward had no fused
    backward: `hf_posenc.blockwise`, whose backward recomputes the probabilities block by block.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step()
    names = {event.key.removeprefix("aten::") for event in profiler.key_averages()}
    forward = sorted({label for op, label in SDPA_KERNELS.items() if op in names})
    backward = sorted({label for op, label in SDPA_KERNELS.items() if op + "_backward" in names})
    if not any(name.endswith("_backward") or name.endswith("Backward0") for name in names):
        return {"forward": ", ".join(forward) or "none", "backward": "-"}
    fallback = "autograd" if "math" in forward else "recompute"
    return {"forward": ", ".join(forward) or "none", "backward": ", ".join(backward) or fallback}


# ---------------------------------------------------------------------------------------------------------------------
# Time: interleaved rounds in one process, medians of paired ratios
# ---------------------------------------------------------------------------------------------------------------------


def time_case(case: Case, encodings: Iterable[str], grid: Grid) -> list[dict[str, Any]]:
    """Time the baseline and `encodings` on `case` in interleaved rounds; one record per encoding."""
    names = [BASELINE, *encodings]
    inputs = make_inputs(case.shape, case.batch, case.length, grid.device)
    steps = {
        n: make_step(build_model(case.shape, _encoding(n), case.length, grid.device, grid.dtype), inputs, case.mode)
        for n in names
    }
    start = time.perf_counter()
    for step in steps.values():  # warm-up: allocator, lazy initialization, memo tables
        step()
    cycle = time.perf_counter() - start
    reps = min(max(int(grid.budget_s / max(cycle, 1e-9)), grid.min_reps), grid.max_reps)
    times = _interleaved(steps, reps)
    records = [_time_record(case, name, times[name], times[BASELINE]) for name in names]
    if grid.kernels:
        for record in records:
            record["kernels"] = sdpa_kernels(steps[record["encoding"]])
    return records


def _encoding(name: str) -> str | None:
    return None if name == BASELINE else name


def _interleaved(steps: dict[str, Callable[[], None]], reps: int) -> dict[str, list[float]]:
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(reps):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _time_record(case: Case, name: str, times: list[float], baseline: list[float]) -> dict[str, Any]:
    ratios = sorted(t / b for t, b in zip(times, baseline))
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        **asdict(case),
        "encoding": name,
        "median_s": statistics.median(times),
        "ratio": statistics.median(ratios),
        "ratio_q1": quartiles[0],
        "ratio_q3": quartiles[2],
        "reps": len(times),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Memory: a fresh process per configuration and encoding
# ---------------------------------------------------------------------------------------------------------------------


def memory_case(case: Case, encoding: str, grid: Grid) -> dict[str, Any]:
    """Peak resident memory of two steps of `case` with `encoding`, measured in a fresh Python process (on a GPU:
    peak allocated GPU memory, in this process)."""
    if grid.device != "cpu":
        try:
            return {**asdict(case), "encoding": encoding, "device": grid.device, **gpu_memory(case, encoding, grid)}
        except Exception as error:  # noqa: BLE001 - out of memory is a result, recorded like a failed child process
            return {**asdict(case), "encoding": encoding, "error": f"{type(error).__name__}: {error}"[:300]}
    spec = json.dumps({**asdict(case), "encoding": encoding, "threads": grid.threads})
    code = "import json, sys; from hf_posenc.bench import memory_child; print(json.dumps(memory_child(sys.argv[1])))"
    result = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-3:]
        return {**asdict(case), "encoding": encoding, "error": " | ".join(tail)}
    return {**asdict(case), "encoding": encoding, **json.loads(result.stdout.strip().splitlines()[-1])}


def memory_child(spec_json: str) -> dict[str, float]:
    """Run in the fresh process: build, measure the resident set, run two steps, report the peak (MiB)."""
    spec = json.loads(spec_json)
    _set_threads(spec.get("threads"))
    model = build_model(spec["shape"], _encoding(spec["encoding"]), spec["length"])
    step = make_step(model, make_inputs(spec["shape"], spec["batch"], spec["length"]), spec["mode"])
    before = _status_mib("VmRSS")
    step()
    step()
    peak = _status_mib("VmHWM")
    return {
        "rss_before_mib": round(before, 1),
        "peak_rss_mib": round(peak, 1),
        "step_peak_mib": round(peak - before, 1),
    }


def gpu_memory(case: Case, encoding: str, grid: Grid) -> dict[str, float]:
    """Peak allocated GPU memory (MiB) of two steps, and the same minus what was allocated before the first step."""
    import torch

    model = build_model(case.shape, _encoding(encoding), case.length, grid.device, grid.dtype)
    step = make_step(model, make_inputs(case.shape, case.batch, case.length, grid.device), case.mode)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() / 2**20
    step()
    step()
    peak = torch.cuda.max_memory_allocated() / 2**20
    del model, step
    torch.cuda.empty_cache()
    peaks = {"rss_before_mib": before, "peak_rss_mib": peak, "step_peak_mib": peak - before}
    return {name: round(value, 1) for name, value in peaks.items()}


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: peak resident), in MiB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


# ---------------------------------------------------------------------------------------------------------------------
# Patch time and import time
# ---------------------------------------------------------------------------------------------------------------------


def patch_times(encodings: Iterable[str], reps: int = 3) -> dict[str, float]:
    """Median seconds of `patch_model` on a BERT-base-shaped model, per encoding (unpatched again between calls)."""
    model = build_model("base", None, SHAPES["base"].trained_length)
    results = {}
    for encoding in encodings:
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            patch_model(model, encoding)
            samples.append(time.perf_counter() - start)
            unpatch_model(model)
        results[encoding] = statistics.median(samples)
    return results


IMPORT_SCENARIOS = {
    "after `import transformers`": "import transformers; import hf_posenc",
    "after `from transformers import BertModel`": "from transformers import BertModel; import hf_posenc",
}
"""`import transformers` is lazy: any use of a model loads torch and `modeling_utils`, which hf_posenc needs to
register its backend. The second scenario is what a user pays: the cost of hf_posenc beyond loading a model class."""


def import_times(reps: int = 5) -> dict[str, Any]:
    """hf_posenc's own cumulative import time (`python -X importtime`), median over fresh processes, per scenario."""
    results = {}
    for label, code in IMPORT_SCENARIOS.items():
        samples = [_import_sample(code) for _ in range(reps)]
        results[label] = {
            "hf_posenc_ms": statistics.median(s[0] for s in samples),
            "total_ms": statistics.median(s[1] for s in samples),
            "code": code,
        }
    return results


def _import_sample(code: str) -> tuple[float, float]:
    """(hf_posenc's cumulative ms, the sum of all top-level imports' cumulative ms) for one fresh process."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    )
    own, total = 0.0, 0.0
    for line in result.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name, cumulative_ms = parts[2], int(parts[1]) / 1000
        if not name.startswith("  "):  # a top-level import of this command (nested ones are indented further)
            total += cumulative_ms
            own += cumulative_ms if name.strip() == "hf_posenc" else 0.0
    return own, total


# ---------------------------------------------------------------------------------------------------------------------
# Running a grid and writing the results
# ---------------------------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Where and with what the numbers were measured: the shared version record plus the machine's hardware."""
    return {
        **environment(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        **_gpu_info(),
    }


def _gpu_info() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def run_grid(
    grid: Grid, out_dir: Path, name: str, log: Callable[[str], None] = print, resume: bool = False
) -> dict[str, Any]:
    """Measure `grid`, writing `out_dir/name.json` and `.md` after every configuration (a long run keeps its part).

    With `resume`, configurations already in `out_dir/name.json` are kept and not measured again.
    """
    _set_threads(grid.threads)
    results: dict[str, Any] = {"meta": {**machine_info(), "preset": name}, "grid": asdict(grid)}
    results.update(timing=[], memory=[], targets=[])
    if resume and (out_dir / f"{name}.json").exists():
        earlier = json.loads((out_dir / f"{name}.json").read_text())
        results.update(timing=earlier["timing"], memory=earlier["memory"])
        results["meta"]["resumed_from"] = {k: earlier["meta"].get(k) for k in ("date", "git_revision")}
    done = {config_key(r) for r in results["timing"]}
    for case in grid.cases():
        if (case.shape, case.length, case.batch, case.mode) in done:
            continue
        load = os.getloadavg()[0]
        try:
            records = time_case(case, grid.encodings_for(case.shape), grid)
        except Exception as error:  # noqa: BLE001 - one failing configuration must not lose a long run's others
            results.setdefault("errors", []).append({**asdict(case), "error": f"{type(error).__name__}: {error}"})
            log(f"{case.label()}: FAILED {type(error).__name__}: {error}")
            write_results(results, out_dir, name)
            continue
        results["timing"] += [{**r, "load_1min": round(load, 2)} for r in records]
        log(f"{case.label()}: " + ", ".join(_log_record(r) for r in records[1:]))
        write_results(results, out_dir, name)
    measured = {config_key(r) for r in results["memory"]}
    for case in _memory_cases(grid):
        if (case.shape, case.length, case.batch, case.mode) in measured:
            continue
        for encoding in (BASELINE, *grid.encodings_for(case.shape)):
            results["memory"].append(memory_case(case, encoding, grid))
        log(f"{case.label()} memory: done")
        write_results(results, out_dir, name)
    if grid.extras:
        results["patch_seconds"] = patch_times(BERT_ENCODINGS)
        results["import"] = import_times()
    results["meta"]["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_results(results, out_dir, name)
    return results


def _log_record(record: dict[str, Any]) -> str:
    kernels = record.get("kernels")
    return f"{record['encoding']} {record['ratio']:.2f}" + (f" [{kernels['forward']}]" if kernels else "")


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _memory_cases(grid: Grid) -> list[Case]:
    lengths, batches = grid.memory_lengths, grid.memory_batches
    return [
        c
        for c in grid.cases()
        if c.mode in grid.memory_modes
        and (lengths is None or c.length in lengths)
        and (batches is None or c.batch in batches)
    ]


def write_results(results: dict[str, Any], out_dir: Path, name: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    results["targets"] = check_targets(results)
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / f"{name}.md").write_text(render_markdown(results))

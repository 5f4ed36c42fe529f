"""Where the time of a patched model goes: operator profiles of one step against the unpatched model.

    python benchmarks/profile_ops.py --shape minilm --length 2048 --mode forward --encodings relative_key_query nezha

Builds the benchmark's models (`hf_posenc.bench.build_model`), runs two warm-up steps, then profiles one step of each
with `torch.profiler` and prints, per encoding, the operators whose self time grew most over the baseline's: the
explanation behind a ratio in benchmarks/results. Appends the Markdown to `--out` if given.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from hf_posenc.bench import SHAPES, build_model, make_inputs, make_step


def self_times_ms(step) -> Counter:
    """Self CPU time (ms) per operator of one run of `step`, after two warm-up runs."""
    step()
    step()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step()
    return Counter({e.key: e.self_cpu_time_total / 1000 for e in profiler.key_averages()})


def report(shape: str, length: int, mode: str, encodings: list[str], top: int) -> str:
    inputs = make_inputs(shape, 1, length)
    base = self_times_ms(make_step(build_model(shape, None, length), inputs, mode))
    lines = [f"### {shape}, L = {length}, batch 1, {mode}, {torch.get_num_threads()} thread(s)", ""]
    lines += [f"Unpatched: {sum(base.values()):.0f} ms of operator self time.", ""]
    for encoding in encodings:
        times = self_times_ms(make_step(build_model(shape, encoding, length), inputs, mode))
        extra = Counter({op: times[op] - base.get(op, 0.0) for op in times})
        total = sum(times.values())
        lines += [f"**{encoding}**: {total:.0f} ms ({total / sum(base.values()):.2f}x); largest increases:", ""]
        lines += ["| operator | ms | over unpatched |", "|---|---|---|"]
        lines += [f"| `{op}` | {times[op]:.0f} | +{ms:.0f} |" for op, ms in extra.most_common(top) if ms > 0.5]
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="minilm")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--mode", choices=("forward", "train"), default="forward")
    parser.add_argument("--encodings", nargs="+", default=["relative_key_query", "nezha", "t5", "alibi"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=6)
    parser.add_argument("--out", type=Path, help="append the Markdown to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    text = report(args.shape, args.length, args.mode, args.encodings, args.top)
    print(text)
    if args.out:
        with args.out.open("a") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()

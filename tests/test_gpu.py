"""GPU checks: every encoding on CUDA computes what it computes on the CPU, and reaches a fused SDPA kernel.

Skipped without CUDA (CI has no GPU). `benchmarks/gpu.sh` runs these and the GPU benchmark on a lent GPU machine.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_model, token_ids

import hf_posenc
from hf_posenc.bench import sdpa_kernels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ENCODINGS = ["learned", "sinusoidal", "relative_key", "relative_key_query", "nezha", "t5", "alibi", "rope"]
OPTIONS = {name: {"max_distance": 16} for name in ("relative_key", "relative_key_query", "nezha")}
OPTIONS["learned"] = {"max_length": 256}  # extended by copy: the table covers the inputs
LENGTH = 150  # past the tiny models' 64 trained positions and the relative encodings' clipping distance


def patched(model_type: str, name: str) -> torch.nn.Module:
    """A tiny model in train mode (dropout 0) with nonzero learned position terms and a padded batch."""
    model = hf_posenc.patch_model(tiny_model(model_type), name, **OPTIONS.get(name, {})).train()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2 and parameter.shape[0] < 40:  # relative tables and T5 buckets are small
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


def inputs(device: str) -> dict[str, torch.Tensor]:
    ids, mask = token_ids(2, LENGTH), torch.ones(2, LENGTH, dtype=torch.long)
    mask[1, 100:] = 0
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def run(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    extra = {"decoder_input_ids": batch["input_ids"]} if model.config.model_type == "bart" else {}
    output = model(**batch, **extra).last_hidden_state
    output.float().square().mean().backward()
    grads = {n: p.grad.float().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return output.detach().float().cpu(), grads


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("model_type", ["bert", "bart"])
@pytest.mark.parametrize("name", ENCODINGS)
def test_cuda_matches_cpu(model_type, name):
    """fp32 on the GPU equals the CPU (atol 1e-4, TF32 off). bf16 on the GPU is as close to fp32 as bf16 on the CPU
    (whose optimized paths tests/test_optimized_paths.py checks against a reference): relative L2 error of the output
    and of every gradient at most twice the CPU's plus 0.01."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = patched(model_type, name)
    want = run(model, inputs("cpu"))
    fp32 = run(copy.deepcopy(model).cuda(), inputs("cuda"))
    torch.testing.assert_close(fp32[0], want[0], atol=1e-4, rtol=1e-4)
    for parameter, grad in want[1].items():
        torch.testing.assert_close(fp32[1][parameter], grad, atol=1e-4, rtol=1e-4)
    gpu = run(copy.deepcopy(model).to("cuda", torch.bfloat16), inputs("cuda"))
    cpu = run(copy.deepcopy(model).to(torch.bfloat16), inputs("cpu"))
    # Key biases are left out: their exact gradient is zero (softmax ignores a shift of a row's scores), and what the
    # runs return is rounding noise (an H100 run gave relative errors of 3e5 on the GPU and 1e5 on the CPU).
    grads = {n: g for n, g in want[1].items() if not n.endswith(("key.bias", "k_proj.bias"))}
    pairs = {"output": (gpu[0], cpu[0], want[0])} | {n: (gpu[1][n], cpu[1][n], g) for n, g in grads.items()}
    worse = {}
    for label, (on_gpu, on_cpu, exact) in pairs.items():
        gpu_error, cpu_error = relative_error(on_gpu, exact), relative_error(on_cpu, exact)
        if gpu_error > 2 * cpu_error + 0.01:
            worse[label] = (gpu_error, cpu_error)
    assert not worse, worse


@pytest.mark.parametrize("name", ENCODINGS)
def test_cuda_bf16_never_drops_to_the_math_kernel(name):
    """Padded batch, bf16: no SDPA call of the forward or the training step takes the math kernel. NEZHA may run no
    SDPA at all: its value term needs the probabilities, which hf_posenc's blockwise attention computes explicitly
    where the band of clipped distances is not narrow compared with a block (short inputs, and one-block GPU calls)."""
    model = patched("bert", name).to("cuda", torch.bfloat16)
    batch = inputs("cuda")

    def step():
        model(**batch).last_hidden_state.float().square().mean().backward()

    kernels = sdpa_kernels(step)
    assert "math" not in kernels["forward"] and kernels["backward"] != "autograd", kernels
    assert name == "nezha" or kernels["forward"] != "none", kernels

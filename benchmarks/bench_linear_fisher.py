"""Diagonal Fisher over the cross-attention K/V weights: fused (hooks + ops.linear_fisher_diag) against torch.func vmap.

    python3 -m pytest benchmarks/bench_linear_fisher.py --benchmark-columns=mean,stddev,min,rounds --benchmark-group-by=group

Paths, each giving Σ_n (∂L_n/∂θ)² for every K/V weight of one batch (fisher_hooks.diagonal_fisher's convention):
- "fused": fisher_hooks.diagonal_fisher (one forward + backward of the summed per-example losses; hooks feed
  linear_fisher_diag with each layer's x and g; per-example gradients never exist), backend "auto";
- "hooks + einsum": the same hooks with the reference backend, i.e. per-example gradients by einsum, squared, summed
  (the plain-PyTorch row of ANCHORS.md);
- "vmap": torch.func per-example gradients of the K/V weights (vmap of grad of a functional call), squared, summed.
Also the op alone on one K/V layer's (x, g) of 64 examples, cpp against the reference (einsum over chunks of
examples, holding up to 64 MB of per-example gradients at a time).
Models (random init; cost does not depend on the weights), both with diffusers' AttnProcessor (plain attention: SDPA has
no vmap batching rule, and ANCHORS.md measured the same way):
- the tiny default model, batch 64 (16 tokens x 64-d text, 45 k K/V weights);
- the AbU paper's MSCOCO UNet (probes/fisher_probe.py's GPU config: 57 M parameters, 7.1 M K/V, 16x16x4 latents,
  77 x 1024 text) at batch 4: a batch of 32 would take minutes per round on a 2-core CPU.
Peak memory: the peak resident set during one call minus the resident set just before it, in a fresh subprocess per
(case, path) once the model and inputs are built (Linux /proc/self/status VmHWM, reset through /proc/self/clear_refs;
MALLOC_MMAP_THRESHOLD_ fixed at 64 KiB so freed tensors leave the resident set). Time: mean per call, in this process.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference_models import MSCOCO_TEXT, mscoco_model

ROOT = Path(__file__).resolve().parents[1]
ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
# On a GPU the MSCOCO UNet runs at ANCHORS.md's batch of 32; a 2-core CPU takes batch 4.
MSCOCO_CASE = "MSCOCO UNet, batch 32" if ON_GPU else "MSCOCO UNet, batch 4"
MODELS = {"tiny default, batch 64": 64, MSCOCO_CASE: 32 if ON_GPU else 4}
ROUNDS = {"tiny default, batch 64": 5, MSCOCO_CASE: 10 if ON_GPU else 4}
# The op alone on one layer's (x, g), (N, T, d_in, d_out): a K/V projection of each model at 64 examples.
LAYERS = {"tiny K/V layer, N=64": (64, 16, 64, 64), "MSCOCO K/V layer, N=64": (64, 77, 1024, 320)}
_results = {}


def build(model_name: str):
    """(DiffusionModel, K/V parameters, (x0, cond, timesteps, noise)), seeded."""
    from diffusers.models.attention_processor import AttnProcessor

    from unlearn_fast.models.tiny import new_tiny_model

    torch.manual_seed(0)
    if model_name.startswith("tiny"):
        model, tokens, text_dim = new_tiny_model(["red apple", "cat face"]), 16, 64
    else:
        model, (tokens, text_dim) = mscoco_model(), MSCOCO_TEXT
    model.unet.eval().set_attn_processor(AttnProcessor())
    batch = MODELS[model_name]
    gen = torch.Generator().manual_seed(1)
    inputs = (torch.randn(batch, *model.latent_shape, generator=gen),
              torch.randn(batch, tokens, text_dim, generator=gen), torch.randint(0, 1000, (batch,), generator=gen),
              torch.randn(batch, *model.latent_shape, generator=gen))
    model.unet.to(DEVICE)  # the MSCOCO model has no text side
    return model, model.parameter_group("kv"), tuple(v.to(DEVICE) for v in inputs)


def run(path: str, model, params, inputs):
    from unlearn_fast.engine.fisher_hooks import _vmap_fisher, diagonal_fisher

    if path == "vmap":
        return _vmap_fisher(model, params, *inputs)
    return diagonal_fisher(model, params, *inputs, backend="reference" if path == "hooks + einsum" else "auto")


def prepare(case: str, path: str):
    """The measured call, ready to run: a Fisher of a model's K/V weights (case in MODELS) or the op on one layer."""
    if case in LAYERS:
        from unlearn_fast import ops

        n, t, d_in, d_out = LAYERS[case]
        gen = torch.Generator().manual_seed(0)
        x, g = torch.randn(n, t, d_in, generator=gen).to(DEVICE), torch.randn(n, t, d_out, generator=gen).to(DEVICE)
        return lambda: ops.linear_fisher_diag(x, g, backend=path)
    built = build(case)
    return lambda: run(path, *built)


def synchronized(call):
    """call, waiting for the GPU's queue to drain, so a timing covers the work and not only its launch."""
    def run_and_wait():
        result = call()
        if ON_GPU:
            torch.cuda.synchronize()
        return result
    return run_and_wait


def peak_memory_growth_mib(case: str, path: str) -> float:
    """Peak memory growth of one call: GPU memory allocated (in this process), or on a CPU the resident set, in a
    fresh process (run as: python bench_linear_fisher.py CASE PATH)."""
    if ON_GPU:
        call = prepare(case, path)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        synchronized(call)()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    result = subprocess.run([sys.executable, __file__, case, path], capture_output=True, text=True, check=True,
                            cwd=ROOT, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_growth_mib"]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+) kB", status.read()).group(1))


@pytest.mark.parametrize("path", ["fused", "hooks + einsum", "vmap"])
@pytest.mark.parametrize("model_name", MODELS)
def test_linear_fisher(benchmark, model_name, path):
    from unlearn_fast import ops

    model, params, inputs = build(model_name)
    benchmark.group = f"K/V Fisher, {model_name}"
    fisher = benchmark.pedantic(synchronized(lambda: run(path, model, params, inputs)), rounds=ROUNDS[model_name],
                                warmup_rounds=1)
    if path != "vmap":
        fast = ("cuda", "triton") if ON_GPU else ("cpp",)
        assert ops.last_backend("linear_fisher_diag") in (("reference",) if path == "hooks + einsum" else fast)
    _results[model_name, path] = fisher
    if (model_name, "fused") in _results:  # every path computes the same numbers
        for name, want in _results[model_name, "fused"].items():
            torch.testing.assert_close(fisher[name], want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    benchmark.extra_info.update(
        batch=len(inputs[0]), kv_params=sum(p.numel() for p in params.values()), threads=torch.get_num_threads(),
        device=str(DEVICE), samples_per_s=len(inputs[0]) / benchmark.stats.stats.mean,
        peak_growth_mib=peak_memory_growth_mib(model_name, path))


@pytest.mark.parametrize("backend", ["cpp", "cuda", "triton", "reference"])
@pytest.mark.parametrize("layer", LAYERS)
def test_op_alone(benchmark, layer, backend):
    from unlearn_fast import ops

    if backend not in ops.available_backends(DEVICE.type) or (backend == "triton" and not ON_GPU):
        pytest.skip(f"{backend} backend not available on {DEVICE.type} (the Triton interpreter is not a speed number)")
    benchmark.group = f"linear_fisher_diag alone, {layer}"
    benchmark.pedantic(synchronized(prepare(layer, backend)), rounds=5, warmup_rounds=1)
    n, t, d_in, d_out = LAYERS[layer]
    benchmark.extra_info.update(gflop_per_s=2 * n * t * d_in * d_out / benchmark.stats.stats.mean / 1e9,
                                threads=torch.get_num_threads(), device=str(DEVICE),
                                peak_growth_mib=peak_memory_growth_mib(layer, backend))


if __name__ == "__main__":  # one measured call in a fresh process, for peak_rss_growth_mib
    torch.set_num_threads(1)
    call = prepare(*sys.argv[1:3])
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # VmHWM := VmRSS
    before = _status_kib("VmRSS")
    call()
    print(json.dumps({"peak_rss_growth_mib": (_status_kib("VmHWM") - before) / 1024}))

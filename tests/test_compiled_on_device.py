"""The compiled path on every available device (``-m device``; ``benchmarks/gpu_suite.sh`` runs the cuda ones).

CPU runs here in the CPU suite; the cuda variants skip without CUDA. What a GPU adds: Triton kernels instead of
Inductor's C++ ones, bf16 merges, and ``torch.cuda.set_sync_debug_mode``, which raises at a device-to-host sync.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters
from torch._inductor.compile_fx import compile_fx, compile_fx_inner

from holitom_fx import HoliTomBackend, HoliTomConfig
from holitom_fx.backend import DYNAMO_CAPTURE
from holitom_fx.ops import inner_merge, outer_merge
from holitom_fx.tiny import synthetic_clip, tiny_llava_onevision, video_prompt

pytestmark = [pytest.mark.device, pytest.mark.usefixtures("fresh_dynamo")]

#: ATen ops that copy a device value to the host (or size an output by data, which needs one).
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_consecutive", "item"}
#: The model, config and prompt of test_backend_llava_onevision's Inductor test: on CPU the C++ kernels
#: it compiled are Inductor cache hits here when both run in one session.
MERGING = HoliTomConfig(retain_ratio=0.25, tau=0.8)
FRAMES = 6


def merge_inputs(device: torch.device, dtype: torch.dtype, frames=8, tokens=16, dim=64):
    """A video grid with a static half (background plus small noise) and a moving half, its saliency, and
    the inner stage's prompt: 5 text tokens, then the outer merge's output, then 3 text tokens."""
    generator = torch.Generator().manual_seed(0)
    background = torch.randn(tokens // 2, dim, generator=generator)
    still = background + 0.1 * torch.randn(frames, tokens // 2, dim, generator=generator)
    moving = torch.randn(frames, tokens - tokens // 2, dim, generator=generator)
    features = torch.cat([still, moving], dim=1).to(device, dtype)
    return features, torch.rand(frames, tokens, generator=generator).to(device)


def outer_then_inner(features, saliency, config: HoliTomConfig):
    """The two merges as the passes chain them: the outer merge's tokens inside a prompt, then the inner one
    ranked by a last-query attention read off the hidden states."""
    outer = outer_merge(features, saliency, config)
    visual = outer.tokens.shape[0]
    hidden = torch.cat([outer.tokens.new_ones(5, outer.tokens.shape[1]), outer.tokens,
                        outer.tokens.new_zeros(3, outer.tokens.shape[1])])[None]
    attention = hidden.float().square().mean(-1).softmax(-1)
    merged, keep = inner_merge(hidden, attention, torch.tensor([5], device=hidden.device), visual,
                               config.inner_ratio)
    return outer.positions, outer.segments, outer.tokens, merged, keep


@torch.no_grad()
def test_compiled_outer_and_inner_merge_equal_eager(device):
    """Inductor (C++ on CPU, Triton on CUDA) against eager on the same device: the same tokens kept, the same
    segments, the same values. fp32 on CPU: within 1e-5. bf16 on CUDA: both compute in fp32 from the same bf16
    inputs (the ops upcast) and round once at the end, so a different fp32 summation order can move a value by
    one bf16 rounding step, at most 2^-7 of it; the kept indices, computed in fp32, must be equal."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tolerance = dict(rtol=2 ** -7, atol=1e-5) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    features, saliency = merge_inputs(device, dtype)
    compiled = torch.compile(outer_then_inner, fullgraph=True, backend="inductor")(features, saliency, MERGING)
    positions, segments, tokens, merged, keep = outer_then_inner(features, saliency, MERGING)
    assert 0 < positions.numel() < features.shape[0] * features.shape[1]  # it merged, and kept something
    assert torch.equal(compiled[0], positions) and compiled[1].tolist() == segments.tolist()
    assert torch.equal(compiled[4], keep) and merged.shape[1] < 5 + positions.numel() + 3  # the inner stage folded
    assert compiled[2].dtype == dtype and compiled[3].dtype == dtype
    torch.testing.assert_close(compiled[2], tokens, **tolerance)
    torch.testing.assert_close(compiled[3], merged, **tolerance)


def video_inputs(model, device: torch.device) -> dict:
    ids = video_prompt(model, FRAMES, [1, 2, 3], [5, 6, 7, 8, 9]).to(device)
    pixels = synthetic_clip(FRAMES, model.config.vision_config.image_size)[None].to(device)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixels)


class RecordingInductor:
    """Inductor, keeping each ATen graph it lowers (after AOTAutograd's decompositions), in compile order."""

    def __init__(self):
        self.aten: list[torch.fx.GraphModule] = []

    def __call__(self, gm, example_inputs):
        def inner(graph, inputs, **kwargs):
            self.aten.append(graph)
            return compile_fx_inner(graph, inputs, **kwargs)

        return compile_fx(gm, example_inputs, inner_compile=inner)


def sync_nodes(graph: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in graph.graph.nodes if n.op == "call_function"
            and getattr(n.target, "__name__", str(n.target)).split(".")[0] in SYNC_OPS]


@torch._dynamo.config.patch(**DYNAMO_CAPTURE)  # what a HoliTom backend sets: both runs under the same settings
def generate_twice(device: torch.device, backend_for) -> tuple[list[int], int]:
    """The tiny LLaVA-OneVision on ``device``, its vision tower and itself compiled as ``holitom_fx.compile``
    does with ``backend_for(model)`` behind a counting wrapper; two identical greedy generations of 4 tokens
    (prefill, a first decode step, then the decode graph Dynamo makes dynamic in the cache length).
    Returns the graphs compiled after each, and the graph breaks Dynamo counted."""
    torch._dynamo.reset()
    counters.clear()
    model = tiny_llava_onevision().to(device)
    inner, graphs = backend_for(model), []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return inner(gm, example_inputs)

    model.model.vision_tower.compile(backend=counting)
    model.compile(backend=counting)
    inputs = video_inputs(model, device)
    counts = []
    for _ in range(2):
        model.generate(**inputs, max_new_tokens=4, do_sample=False)
        counts.append(len(graphs))
    return counts, sum(counters["graph_break"].values())


@torch.no_grad()
def test_holitom_generate_through_inductor_on_device(device):
    """``generate()`` with the HoliTom backend compiling through Inductor on ``device``: the prefill is merged by
    both stages with no fallback; the same graphs and graph breaks as plain Dynamo on the unmodified model (the
    breaks Dynamo counts there are transformers' own, in the output-capturing hooks it installs at the first
    call, which hold no tensor op); nothing recompiled by a second identical ``generate()``; and in the ATen
    graphs Inductor lowers, no host sync but transformers' placeholder-count check, in the prefill."""
    plain, plain_breaks = generate_twice(device, lambda model: (lambda gm, _: gm.forward))
    inductor, made = RecordingInductor(), []

    def holitom(model):
        made.append(HoliTomBackend(MERGING, compiler=inductor).bind(model))
        return made[0]

    with torch._functorch.config.patch(enable_autograd_cache=False):  # every graph lowered here, none loaded
        counts, breaks = generate_twice(device, holitom)
    backend = made[0]
    report = backend.last_report
    assert report is not None and report.tokens_in > report.tokens_after_outer > report.tokens_after_inner
    assert report.saliency == "vision attention (encoder graph)"
    assert backend.fallbacks == 0 and backend.saliency_fallbacks == 0
    assert counts[0] == plain[0] and breaks == plain_breaks  # no graph break added
    assert counts[1] == counts[0]  # no recompilation

    assert len(inductor.aten) == len(backend.graphs) == counts[0]  # one lowering per graph, paired in order
    prefills = [aten for aten, record in zip(inductor.aten, backend.graphs) if record.boundary is not None]
    assert len(prefills) == 1
    for aten in inductor.aten:
        for node in sync_nodes(aten):
            assert aten is prefills[0] and "get_placeholder_mask" in node.meta.get("stack_trace", ""), (
                f"a host sync HoliTom would own: {node.format_node()}\n{node.meta.get('stack_trace')}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.set_sync_debug_mode needs CUDA")
@torch.no_grad()
def test_merged_prefill_on_cuda_syncs_nothing(monkeypatch):
    """The compiled vision graph and merged prefill (with HoliTom's runtime wrapper around them) run under
    ``torch.cuda.set_sync_debug_mode("error")``, which raises at any device-to-host sync. transformers'
    placeholder-count check is the one sync of the unmodified model's prefill (the test above); it is switched
    off here the way transformers offers (``TRANSFORMERS_DISABLE_TORCH_CHECK=1``, read while tracing). The first
    ``generate()`` runs unchecked: Triton may benchmark kernel configs at a first launch, which syncs."""
    monkeypatch.setenv("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")
    device = torch.device("cuda")
    model = tiny_llava_onevision().to(device)
    backend = HoliTomBackend(MERGING).bind(model)
    strict = []

    def sync_checked(gm, example_inputs):
        compiled = backend(gm, example_inputs)

        def run(*args):
            if not strict:
                return compiled(*args)
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            try:
                return compiled(*args)
            finally:
                torch.cuda.set_sync_debug_mode(previous)

        return run

    model.model.vision_tower.compile(backend=sync_checked)
    model.compile(backend=sync_checked)
    inputs = video_inputs(model, device)
    model.generate(**inputs, max_new_tokens=1, do_sample=False)  # compiles the vision graph and the prefill
    strict.append(True)
    model.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert len(backend.graphs) == 2 and backend.fallbacks == 0 and backend.saliency_fallbacks == 0
    report = backend.last_report
    assert report.tokens_after_inner < report.tokens_after_outer < report.tokens_in
    assert report.saliency == "vision attention (encoder graph)"

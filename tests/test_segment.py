"""The deterministic segment sum behind the linear-cost merges: sums in index order, no graph break, same bits."""

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings, strategies as st

from holitom_fx import HoliTomConfig
from holitom_fx.ops import inner_merge, outer_merge
from holitom_fx.ops.segment import segment_sum


@st.composite
def segmented_rows(draw):
    rows = draw(st.integers(0, 40))
    width = draw(st.integers(1, 9))
    segments = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, width, generator=generator) * 10 ** draw(st.integers(-3, 3))
    segment = torch.randint(0, segments, (rows,), generator=generator)
    return values, segment, segments


@given(segmented_rows())
def test_segment_sum_adds_each_segment_in_index_order(case):
    """Bit for bit the left-to-right sum of a segment's rows (the order the merges' closed forms assume)."""
    values, segment, segments = case
    out = segment_sum(values, segment, segments)
    assert out.shape == (segments, values.shape[1])
    for s in range(segments):
        expected = torch.zeros(values.shape[1])
        for row in (segment == s).nonzero().flatten().tolist():
            expected = expected + values[row]
        assert torch.equal(out[s], expected), f"segment {s}"


@settings(max_examples=10)  # each example compiles
@given(segmented_rows())
def test_segment_sum_compiles_without_a_graph_break_to_eager_bits(case):
    values, segment, segments = case
    torch._dynamo.reset()
    compiled = torch.compile(lambda v, s: segment_sum(v * 2.0, s, segments) + 1.0, fullgraph=True)
    assert torch.equal(compiled(values, segment), segment_sum(values * 2.0, segment, segments) + 1.0)


def test_segment_sum_refuses_an_id_out_of_range():
    with pytest.raises((IndexError, RuntimeError)):
        segment_sum(torch.ones(3, 2), torch.tensor([0, 3, 1]), 3)


def test_compiled_merges_are_bit_stable_run_to_run():
    """Outer + inner merge compiled with Inductor on two threads: three runs, identical bits (Inductor's own
    scatter-add would race its atomic adds across threads)."""
    generator = torch.Generator().manual_seed(3)
    background = torch.randn(1, 48, 256, generator=generator)
    features = torch.cat([background + 0.1 * torch.randn(8, 48, 256, generator=generator),
                          torch.randn(8, 48, 256, generator=generator)], dim=1)
    saliency = torch.rand(8, 96, generator=generator)
    config = HoliTomConfig(retain_ratio=0.25)

    def step(features, saliency):
        outer = outer_merge(features, saliency, config)
        hidden = torch.cat([outer.tokens.new_zeros(5, 256), outer.tokens])[None]
        return inner_merge(hidden, hidden.norm(dim=-1), torch.tensor([5]), outer.tokens.shape[0], 0.5)[0]

    torch._dynamo.reset()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        compiled = torch.compile(step, fullgraph=True)
        runs = [compiled(features, saliency) for _ in range(3)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(runs[0], run) for run in runs[1:])
    torch.testing.assert_close(runs[0], step(features, saliency), rtol=1e-5, atol=1e-5)


@pytest.mark.device
def test_segment_sum_on_each_device_is_bit_stable_and_matches_the_cpu(device):
    """On CUDA the sort-based kernel: three runs give the same bits, equal to the CPU's sums within fp32 rounding."""
    generator = torch.Generator().manual_seed(5)
    values = torch.randn(4096, 64, generator=generator)
    segment = torch.randint(0, 37, (4096,), generator=generator)
    runs = [segment_sum(values.to(device), segment.to(device), 37).cpu() for _ in range(3)]
    assert all(torch.equal(runs[0], run) for run in runs[1:])
    torch.testing.assert_close(runs[0], segment_sum(values, segment, 37), rtol=1e-5, atol=1e-4)
    assert not torch.are_deterministic_algorithms_enabled()  # the op leaves the global setting as it found it

import pytest
import torch
from hypothesis import given, strategies as st

import torch.nn.functional as F

from holitom_fx.ops import inner_kept_count, inner_merge, kept_slots, mask_dropped_slots, restore_dropped_slots

from . import reference_holitom as ref


@st.composite
def inner_inputs(draw):
    batch = draw(st.integers(1, 3))
    span = draw(st.integers(0, 12))
    text = draw(st.integers(1, 6))
    length = span + text + draw(st.integers(0, 3))
    dim = draw(st.integers(2, 8))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    hidden = torch.randn(batch, length, dim, generator=generator)
    attention = torch.rand(batch, length, generator=generator)
    starts = [draw(st.integers(0, length - span)) for _ in range(batch)]
    ratio = draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 0.9]))
    return hidden, attention, starts, span, ratio


@given(inner_inputs())
def test_inner_merge_equals_the_sequential_fold(inputs):
    hidden, attention, starts, span, ratio = inputs
    out, keep = inner_merge(hidden, attention, torch.tensor(starts), span, ratio)
    expected, expected_keep = ref.inner_merge_loop(hidden, attention, starts, span, ratio)
    assert keep.tolist() == expected_keep
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@given(inner_inputs())
def test_inner_merge_keeps_text_and_the_budget(inputs):
    hidden, attention, starts, span, ratio = inputs
    out, keep = inner_merge(hidden, attention, torch.tensor(starts), span, ratio)
    length = hidden.shape[1]
    assert out.shape[1] == length - span + inner_kept_count(span, ratio)
    for row, start in zip(keep.tolist(), starts):
        assert row == sorted(set(row))
        outside = [i for i in range(length) if not start <= i < start + span]
        assert set(outside) <= set(row)
        # Text tokens are untouched.
        for i in outside:
            assert torch.equal(out[starts.index(start), row.index(i)], hidden[starts.index(start), i])


def test_ratio_zero_is_identity():
    hidden = torch.randn(2, 9, 4)
    out, keep = inner_merge(hidden, torch.rand(2, 9), torch.tensor([1, 2]), 5, 0.0)
    assert torch.equal(out, hidden) and keep.tolist() == [list(range(9))] * 2


def test_low_precision_matches_fp32_fold():
    hidden = torch.randn(1, 12, 8).to(torch.bfloat16)
    attention = torch.rand(1, 12)
    out, keep = inner_merge(hidden, attention, torch.tensor([2]), 8, 0.5)
    expected, _ = inner_merge(hidden.float(), attention, torch.tensor([2]), 8, 0.5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected.to(torch.bfloat16), rtol=0, atol=0)


@pytest.mark.parametrize("args,match", [
    ((torch.zeros(4, 5), torch.zeros(4), torch.tensor([0]), 2, 0.5), r"hidden must be \[B, L, E\]"),
    ((torch.zeros(1, 5, 2), torch.zeros(1, 5), torch.tensor([0, 1]), 2, 0.5), r"span_start must be \[B\]"),
    ((torch.zeros(1, 5, 2), torch.zeros(1, 5), torch.tensor([0]), 6, 0.5), "span_length=6"),
    ((torch.zeros(1, 5, 2), torch.zeros(1, 5), torch.tensor([4]), 2, 0.5), "leaves"),
    ((torch.zeros(1, 5, 2), torch.zeros(1, 5), torch.tensor([0]), 2, 1.0), "ratio=1.0"),
])
def test_bad_input_gives_a_clear_error(args, match):
    with pytest.raises(ValueError, match=match):
        inner_merge(*args)


@given(inner_inputs(), st.data())
def test_inner_merge_over_scattered_visual_tokens_equals_the_sequential_fold(inputs, data):
    """Visual tokens anywhere in the row (Qwen3-VL's frames, each in a span of its own)."""
    hidden, attention, _, span, ratio = inputs
    length = hidden.shape[1]
    rows = [sorted(data.draw(st.permutations(range(length)))[:span]) for _ in range(hidden.shape[0])]
    out, keep = inner_merge(hidden, attention, torch.zeros(hidden.shape[0], dtype=torch.long), span, ratio,
                            visual=torch.tensor(rows, dtype=torch.long).reshape(hidden.shape[0], span))
    expected, expected_keep = ref.inner_merge_loop(hidden, attention, [0] * hidden.shape[0], span, ratio, rows)
    assert keep.tolist() == expected_keep
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@st.composite
def padded_caches(draw):
    """Short per-row caches ``[B, H, L'', D]`` of the kept tokens ``keep[B, L'']`` (a different set per row) out of
    ``L'`` prefill slots, a query of one decoded token, and its own key/value."""
    batch, heads, dim = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.sampled_from([4, 8]))
    length = draw(st.integers(2, 12))
    kept = draw(st.integers(1, length))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    keep = torch.stack([torch.randperm(length, generator=generator)[:kept].sort().values for _ in range(batch)])
    short = [torch.randn(batch, heads, kept, dim, generator=generator) for _ in range(2)]
    new = [torch.randn(batch, heads, 1, dim, generator=generator) for _ in range(3)]
    padding = draw(st.booleans())
    return keep, length, short, new, padding


@given(padded_caches())
def test_full_length_caches_with_dropped_slots_masked_attend_as_the_short_caches(case):
    """A padded batch's decode step over the restored full-length cache, dropped slots masked, equals attention
    over the short cache of kept tokens alone (what a batch-1 run keeps)."""
    keep, length, (key, value), (query, new_key, new_value), padding = case
    slots = kept_slots(keep, length)
    assert slots.sum(1).tolist() == [keep.shape[1]] * keep.shape[0]
    full_key = torch.cat([restore_dropped_slots(key, keep, length, 2), new_key], 2)
    full_value = torch.cat([restore_dropped_slots(value, keep, length, 2), new_value], 2)
    torch.testing.assert_close(full_key[:, :, :length].gather(2, keep[:, None, :, None].expand_as(key)), key,
                               rtol=0, atol=0)
    expected = F.scaled_dot_product_attention(query, torch.cat([key, new_key], 2), torch.cat([value, new_value], 2))
    # a layer's own mask: everything visible (bool), or the same as additive zeros (float)
    mask = torch.ones(keep.shape[0], 1, 1, length + 1, dtype=torch.bool) if padding else None
    for given_mask in (mask, None if mask is None else torch.zeros(mask.shape)):
        masked = mask_dropped_slots(given_mask, slots, full_key)
        got = F.scaled_dot_product_attention(query, full_key, full_value, attn_mask=masked)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    unmasked = F.scaled_dot_product_attention(query, full_key, full_value)
    if keep.shape[1] < length:  # the mask is what makes them equal
        assert not torch.allclose(unmasked, expected, atol=1e-5)


@given(inner_inputs(), st.integers(2, 4))
def test_several_streams_per_token_merge_as_one_vector(inputs, streams):
    """``[B, L, N, E]`` (hyper-connections' residual streams) is merged as ``[B, L, N*E]``: the same kept tokens,
    each stream folded with the same weights."""
    hidden, attention, starts, span, ratio = inputs
    many = torch.cat([hidden * (s + 1) + s for s in range(streams)], dim=-1).unflatten(-1, (streams, -1))
    out, keep = inner_merge(many, attention, torch.tensor(starts), span, ratio)
    expected, expected_keep = ref.inner_merge_loop(many.flatten(2), attention, starts, span, ratio)
    assert out.shape == (many.shape[0], expected.shape[1], *many.shape[2:])
    assert keep.tolist() == expected_keep
    torch.testing.assert_close(out, expected.unflatten(-1, many.shape[2:]), rtol=1e-5, atol=1e-5)

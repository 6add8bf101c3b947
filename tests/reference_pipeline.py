"""Eager reference of HoliTom on an unmodified transformers model (test code only).

The saliency is either the feature-norm fallback or the spec's: attention received in the
vision layer feeding the projector, read from transformers' own eager attention
(``output_attentions``) of an uncompiled model with the same weights, pooled by the model's
own feature-pooling code.
Merged ``inputs_embeds`` are computed with ``holitom_fx.ops`` and fed to the model's own
decoder layers, called one by one; the inner merge is applied at layer K by the loop
reference of ``reference_holitom``, from attention recomputed with transformers' own rotary
helper. Greedy decoding continues on the per-layer caches at compact positions.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from holitom_fx import HoliTomConfig
from holitom_fx.archs import layout_for
from holitom_fx.ops import feature_saliency, outer_merge, place_by_frame, splice_span

from . import reference_holitom as ref

PASS_THROUGH = {"llava_onevision": 1, "llava_next_video": 0}  # tokens after each video's frame grid


def vision_attention_saliency(twin, pixel_values_videos) -> torch.Tensor:
    """``[T, N]``: attention received per patch in the vision layer whose output feeds the projector
    (transformers' eager attention, mean over heads and queries), pooled by the model's own pooling
    code (LLaVA-OneVision's ``apply_pooling``, LLaVA-NeXT-Video's ``vision_resampler``).

    ``twin``: an uncompiled model with the compiled one's weights; switched to eager attention."""
    twin.set_attn_implementation("eager")
    config = twin.config
    pixels = pixel_values_videos.flatten(0, 1)
    layer = config.vision_feature_layer % (config.vision_config.num_hidden_layers + 1) - 1
    attention = twin.model.vision_tower(pixels, output_attentions=True).attentions[layer]  # [T, H, P, P]
    received = attention.mean(dim=(1, 2))
    if config.vision_feature_select_strategy == "default":
        received = received[:, 1:]  # the CLS token, as the features drop it
    pool = getattr(twin.model, "apply_pooling", None) or twin.model.vision_resampler
    return pool(received[..., None])[..., 0]


def merged_embeds(model, input_ids, pixel_values_videos, cfg: HoliTomConfig, frames: int, saliency_twin=None,
                  image=None):
    """(inputs_embeds after the outer merge, the merged videos' starts, tokens per merged video, original
    index of each token), batch 1; each of the videos (``pixel_values_videos [videos, T, ...]``, in prompt
    order) merged on its own.

    ``image``: ``pixel_values`` and ``image_sizes`` of an image placed as is at its own tokens."""
    inner = model.model
    clips = inner.get_video_features(pixel_values_videos=pixel_values_videos).pooler_output  # [videos, V, E]
    embeds = inner.get_input_embeddings()(input_ids)
    if image is not None:
        image_features = torch.cat(inner.get_image_features(**image).pooler_output)
        embeds = embeds.masked_scatter((input_ids == model.config.image_token_index)[..., None], image_features)
    mask = (input_ids == model.config.video_token_index)[0]
    embeds = embeds.masked_scatter(mask[None, :, None], clips.flatten(0, 1))
    span = clips.shape[1]
    starts = [int(i) for i in torch.nonzero(mask).flatten() if i == 0 or not mask[i - 1]]
    original = torch.arange(embeds.shape[1])[None]
    for index in reversed(range(len(starts))):  # the last video first: earlier starts stay put
        features = clips[index]
        grid_tokens = span - PASS_THROUGH[model.config.model_type]  # LLaVA-OneVision: one newline
        grid = features[:grid_tokens].reshape(frames, grid_tokens // frames, -1)
        ranking = feature_saliency(grid) if saliency_twin is None else vision_attention_saliency(
            saliency_twin, pixel_values_videos[index:index + 1])
        out = outer_merge(grid, ranking, cfg)
        tokens = torch.cat([out.tokens, features[grid_tokens:]])[None]
        source = torch.cat([out.positions, torch.arange(grid_tokens, span)])[None]
        embeds, step = splice_span(embeds, torch.tensor([starts[index]]), span, tokens, source)
        original = original.gather(1, step)
    merged = tokens.shape[1]
    return embeds, [start - index * (span - merged) for index, start in enumerate(starts)], merged, original


def last_row_attention(layer, hidden, cos, sin, apply_rotary=apply_rotary_pos_emb):
    attn = layer.self_attn
    normed = layer.input_layernorm(hidden)
    batch, length, _ = hidden.shape
    q = attn.q_proj(normed).view(batch, length, -1, attn.head_dim)
    k = attn.k_proj(normed).view(batch, length, -1, attn.head_dim)
    if hasattr(attn, "q_norm"):  # Qwen3: per-head RMSNorm before the rotary
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    q, k = apply_rotary(q, k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q[:, :, -1:] @ k.transpose(-1, -2)) * attn.scaling
    return scores.softmax(-1).mean(1)[:, 0]


@torch.no_grad()
def generate(model, input_ids, pixel_values_videos, cfg: HoliTomConfig, frames: int, new_tokens: int,
             saliency_twin=None, image=None, step_logits: list | None = None):
    """(prefill logits of the last position [1, vocab], greedy tokens [new_tokens]) of a LLaVA model.

    Dynamic tokens are ranked by feature norm, or with ``saliency_twin`` (an uncompiled model with
    the same weights) by the vision encoder's attention received.
    """
    hidden, starts, span, original = merged_embeds(model, input_ids, pixel_values_videos, cfg, frames, saliency_twin,
                                                  image)
    if cfg.positions == "compact":
        positions, next_position = torch.arange(hidden.shape[1])[None], hidden.shape[1]
    else:
        positions, next_position = original, input_ids.shape[1]
    return run_decoder(model, hidden, starts, span, positions, lambda step: torch.tensor([[next_position + step]]),
                       cfg, new_tokens, step_logits=step_logits)


def qwen_merged_embeds(model, inputs, cfg: HoliTomConfig):
    """(inputs_embeds after the outer merge, the merged videos' starts, tokens per merged video, the
    M-RoPE positions [3, 1, L'] each token keeps: its representative's (t, h, w)) of a Qwen2-VL-family
    model, batch 1; each video merged on its own, an image placed as is; ranked by feature norm."""
    inner = model.model
    input_ids = inputs["input_ids"]
    embeds = inner.get_input_embeddings()(input_ids)
    if "pixel_values" in inputs:
        image = torch.cat(inner.get_image_features(pixel_values=inputs["pixel_values"],
                                                   image_grid_thw=inputs["image_grid_thw"]).pooler_output)
        embeds = embeds.masked_scatter((input_ids == model.config.image_token_id)[..., None], image)
    videos = inner.get_video_features(pixel_values_videos=inputs["pixel_values_videos"],
                                      video_grid_thw=inputs["video_grid_thw"]).pooler_output
    mask = (input_ids == model.config.video_token_id)[0]
    embeds = embeds.masked_scatter(mask[None, :, None], torch.cat(videos))
    positions, _ = inner.get_rope_index(input_ids, mm_token_type_ids=inputs["mm_token_type_ids"],
                                        image_grid_thw=inputs.get("image_grid_thw"),
                                        video_grid_thw=inputs["video_grid_thw"],
                                        attention_mask=inputs["attention_mask"])
    merge = model.config.vision_config.spatial_merge_size
    starts = [int(i) for i in torch.nonzero(mask).flatten() if i == 0 or not mask[i - 1]]
    original = torch.arange(embeds.shape[1])[None]
    for index in reversed(range(len(starts))):  # the last video first: earlier starts stay put
        t, h, w = inputs["video_grid_thw"][index].tolist()
        grid = videos[index].reshape(t, h * w // merge ** 2, -1)  # one frame per temporal patch
        out = outer_merge(grid, feature_saliency(grid), cfg)
        embeds, step = splice_span(embeds, torch.tensor([starts[index]]), videos[index].shape[0], out.tokens[None],
                                   out.positions[None])
        original = original.gather(1, step)
    span, merged = videos[0].shape[0], out.tokens.shape[0]
    starts = [start - index * (span - merged) for index, start in enumerate(starts)]
    return embeds, starts, merged, positions.gather(-1, original.expand(3, *original.shape))


def qwen3_merged_embeds(model, inputs, cfg: HoliTomConfig):
    """(inputs_embeds after the outer merge, positions [3, 1, L'], the merged visual mask [1, L'], the
    deepstack features merged alike, the indices of the merged video's tokens) of a Qwen3-VL model, batch 1, one video whose temporal patches are
    spans of their own: merged as one grid, each merged token placed in its representative's frame span.
    An image is placed as is, its deepstack rows beside the video's, in sequence order (as the model joins
    them)."""
    inner = model.model
    input_ids = inputs["input_ids"]
    out = inner.get_video_features(pixel_values_videos=inputs["pixel_values_videos"],
                                   video_grid_thw=inputs["video_grid_thw"])
    features = torch.cat(out.pooler_output)
    deepstack = [torch.cat(layer) for layer in out.deepstack_features]
    mask = input_ids == model.config.video_token_id
    image_mask = input_ids == model.config.image_token_id
    embeds = inner.get_input_embeddings()(input_ids)
    if "pixel_values" in inputs:
        image = inner.get_image_features(pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
        embeds = embeds.masked_scatter(image_mask[..., None], torch.cat(image.pooler_output))
        image_deepstack = [torch.cat(layer) for layer in image.deepstack_features]
    embeds = embeds.masked_scatter(mask[..., None], features)
    positions, _ = inner.get_rope_index(input_ids, mm_token_type_ids=inputs["mm_token_type_ids"],
                                        image_grid_thw=inputs.get("image_grid_thw"),
                                        video_grid_thw=inputs["video_grid_thw"],
                                        attention_mask=inputs["attention_mask"])
    t, h, w = inputs["video_grid_thw"][0].tolist()
    per_frame = h * w // model.config.vision_config.spatial_merge_size ** 2
    grid = features.reshape(t, per_frame, -1)
    carried = torch.cat(deepstack, -1).reshape(t, per_frame, -1)
    merged = outer_merge(grid, feature_saliency(grid), cfg, carried=carried)
    hidden, source = place_by_frame(embeds, mask, merged.tokens[None], merged.positions[None], t, per_frame)
    merged_deepstack = merged.carried.split([d.shape[-1] for d in deepstack], -1)
    visual = (mask | image_mask).gather(1, source)
    if "pixel_values" in inputs:
        is_image = image_mask.gather(1, source)[visual]
        joined = []
        for image_rows, video_rows in zip(image_deepstack, merged_deepstack):
            rows = image_rows.new_zeros(int(visual.sum()), image_rows.shape[-1])
            rows[is_image], rows[~is_image] = image_rows, video_rows
            joined.append(rows)
        merged_deepstack = joined
    video_rows = torch.nonzero(mask.gather(1, source)[0]).flatten().tolist()
    return hidden, positions.gather(-1, source.expand(3, *source.shape)), visual, merged_deepstack, video_rows


@torch.no_grad()
def qwen_generate(model, inputs, cfg: HoliTomConfig, new_tokens: int):
    """The same for a Qwen2-VL-family model: decoding continues after the prompt's last (t, h, w).
    Qwen3-VL: frames as spans, deepstack features added after its first layers, the inner merge over
    the merged video's tokens wherever they lie."""
    if layout_for(model.config).frame_spans:
        hidden, positions, visual, deepstack, video_rows = qwen3_merged_embeds(model, inputs, cfg)
        lm = model.model.language_model

        def after_layer(index, states):
            return lm._deepstack_process(states, visual, deepstack[index]) if index < len(deepstack) else states

        last = positions[..., -1:]
        return run_decoder(model, hidden, [], 0, positions, lambda step: last + 1 + step, cfg, new_tokens,
                           after_layer=after_layer, visual=video_rows)
    hidden, starts, span, positions = qwen_merged_embeds(model, inputs, cfg)
    last = positions[..., -1:]
    return run_decoder(model, hidden, starts, span, positions, lambda step: last + 1 + step, cfg, new_tokens)


def run_decoder(model, hidden, starts, span, positions, decode_position, cfg: HoliTomConfig, new_tokens: int,
                after_layer=lambda index, hidden: hidden, visual: list[int] | None = None,
                step_logits: list | None = None, apply_rotary=apply_rotary_pos_emb):
    """The model's own decoder layers, one by one, on merged embeddings at ``positions``; the inner
    merge at layer K by the loop reference, on each video span (``starts``, ``span`` tokens) or on the
    ``visual`` token indices; ``after_layer(index, hidden)`` after each prefill layer; greedy decoding on
    the per-layer caches at ``decode_position(step)``. Returns (prefill logits of the last position,
    greedy tokens); ``step_logits`` receives every step's logits (the prefill's first). ``apply_rotary``: the
    model's own rotary application, for layer K-1's q/k (GLM rotates part of each head)."""
    lm = model.model.language_model
    layer_k = cfg.resolve_inner_layer(len(lm.layers))
    cos, sin = lm.rotary_emb(hidden, positions)
    cache = DynamicCache(config=lm.config)
    previous_input = hidden  # input of the previous layer: layer K-1's q/k come from it
    for index, layer in enumerate(lm.layers):
        if index == layer_k:
            attention = last_row_attention(lm.layers[index - 1], previous_input, cos, sin, apply_rotary)
            keep = torch.arange(hidden.shape[1])
            if visual is not None:
                hidden, keeps = ref.inner_merge_loop(hidden, attention, [0], len(visual), cfg.inner_ratio, [visual])
                keep = keep[keeps[0]]
            for start in reversed(starts):  # each video's span on its own, the last first
                hidden, keeps = ref.inner_merge_loop(hidden, attention, [start], span, cfg.inner_ratio)
                attention, keep = attention[:, keeps[0]], keep[keeps[0]]
            cos, sin = cos[:, keep], sin[:, keep]
        previous_input = hidden
        hidden = after_layer(index, layer(hidden, attention_mask=None, position_embeddings=(cos, sin),
                                          past_key_values=cache, use_cache=True, position_ids=None))
    logits = model.lm_head(lm.norm(hidden[:, -1:]))[:, 0]
    tokens = [int(logits.argmax(-1))]
    collected = step_logits if step_logits is not None else []
    collected.append(logits)
    for step in range(new_tokens - 1):
        hidden = lm.embed_tokens(torch.tensor([[tokens[-1]]]))
        cos, sin = lm.rotary_emb(hidden, decode_position(step))
        for layer in lm.layers:
            hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), past_key_values=cache,
                           use_cache=True, position_ids=None)
        collected.append(model.lm_head(lm.norm(hidden))[:, -1])
        tokens.append(int(collected[-1][0].argmax()))
    return logits, tokens


@torch.no_grad()
def forward_greedy(model, hidden, positions, decode_position, new_tokens: int):
    """(logits of every step ``[new_tokens, vocab]``, greedy tokens) of the model's own forward on merged
    embeddings at ``positions``, then on its cache at ``decode_position(step)`` (outer stage only)."""
    step = model(inputs_embeds=hidden, position_ids=positions, attention_mask=torch.ones(1, hidden.shape[1]),
                 use_cache=True)
    steps = [step.logits[:, -1]]
    tokens = [int(steps[0][0].argmax())]
    for index in range(new_tokens - 1):
        step = model(input_ids=torch.tensor([[tokens[-1]]]), position_ids=decode_position(index),
                     attention_mask=torch.ones(1, hidden.shape[1] + index + 1), past_key_values=step.past_key_values,
                     use_cache=True)
        steps.append(step.logits[:, -1])
        tokens.append(int(steps[-1][0].argmax()))
    return torch.cat(steps), tokens


def mrope_merged_prompt(model, inputs, cfg, token_id: int):
    """An M-RoPE model's video prompt (``token_id`` placeholders, a span per temporal patch or one) after the
    outer stage applied by hand with the model's own encoder and ``get_rope_index``: (embeddings, every
    token's (t, h, w) [3, 1, L'] (a merged token's: its representative's), the merged video's token indices,
    the prompt's last position). Feature-norm saliency, as generate() encodes outside the graph."""
    inner = model.model
    ids = inputs["input_ids"]
    features = torch.cat(inner.get_video_features(pixel_values_videos=inputs["pixel_values_videos"],
                                                  video_grid_thw=inputs["video_grid_thw"]).pooler_output)
    mask = ids == token_id
    embeds = inner.get_input_embeddings()(ids).masked_scatter(mask[..., None], features)
    positions, _ = inner.get_rope_index(ids, mm_token_type_ids=inputs["mm_token_type_ids"],
                                        video_grid_thw=inputs["video_grid_thw"], attention_mask=inputs["attention_mask"])
    t, h, w = inputs["video_grid_thw"][0].tolist()
    per_frame = h * w // model.config.vision_config.spatial_merge_size ** 2
    grid = features.reshape(t, per_frame, -1)
    out = outer_merge(grid, feature_saliency(grid), cfg)
    hidden, source = place_by_frame(embeds, mask, out.tokens[None], out.positions[None], t, per_frame)
    video_rows = torch.nonzero(mask.gather(1, source)[0]).flatten().tolist()
    return hidden, positions.gather(-1, source.expand(positions.shape[0], *source.shape)), video_rows, positions[..., -1:]

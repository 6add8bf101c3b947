"""Tiny random-weight video LLMs and clips built in code: for tests, examples and CPU benchmarks."""

from __future__ import annotations

import torch


def tiny_llava_onevision(seed: int = 0, layers: int = 4, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                         image_size: int = 56, patch_size: int = 14, vocab: int = 200, vision_hidden: int = 32,
                         vision_layers: int = 2, vision_heads: int = 2, intermediate: int | None = None):
    """A random-weight ``LlavaOnevisionForConditionalGeneration`` (SigLIP + Qwen2), eval mode, fp32.

    ``image_size / patch_size`` patches per side, pooled 2x: 4 tokens per frame at the defaults.
    Video token id ``vocab - 2``, image token id ``vocab - 1``; images use one any-resolution
    tile (``pixel_values [B, 2, 3, S, S]``: base view and tile, ``image_sizes [[S, S]]``).
    The LLM's MLP width is ``intermediate`` (default ``2 * hidden``), the vision tower's ``2 * vision_hidden``.
    """
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, \
        SiglipVisionConfig

    torch.manual_seed(seed)
    vision = SiglipVisionConfig(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                                num_hidden_layers=vision_layers, num_attention_heads=vision_heads,
                                image_size=image_size, patch_size=patch_size)
    text = Qwen2Config(hidden_size=hidden, intermediate_size=intermediate or 2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                       max_position_embeddings=1024)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=vocab - 1,
                                  video_token_index=vocab - 2, vision_feature_layer=-1,
                                  vision_feature_select_strategy="full",
                                  image_grid_pinpoints=[[image_size, image_size]])
    return LlavaOnevisionForConditionalGeneration(config).eval()


def tiny_llava_next_video(seed: int = 0, layers: int = 4, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                          image_size: int = 56, patch_size: int = 14, vocab: int = 200):
    """A random-weight ``LlavaNextVideoForConditionalGeneration`` (CLIP + Llama), eval mode, fp32.

    ``image_size / patch_size`` patches per side (plus CLS, dropped), average-pooled with stride 2:
    4 tokens per frame at the defaults, no newline. Token ids as in ``tiny_llava_onevision``.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextVideoConfig, \
        LlavaNextVideoForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=patch_size)
    text = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                       max_position_embeddings=1024)
    config = LlavaNextVideoConfig(vision_config=vision, text_config=text, image_token_index=vocab - 1,
                                  video_token_index=vocab - 2, vision_feature_layer=-1,
                                  image_grid_pinpoints=[[image_size, image_size]])
    return LlavaNextVideoForConditionalGeneration(config).eval()


def video_token_count(model, frames: int) -> int:
    """Placeholder tokens one video of ``frames`` frames takes in the prompt (grid + pass-through)."""
    from .archs import layout_for

    layout = layout_for(model.config)
    return frames * layout.tokens_per_frame(model.config) + layout.pass_through_tokens


def synthetic_clip(frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """A clip with real temporal redundancy: a fixed textured background and a square moving across it.

    Returns ``[frames, 3, size, size]`` floats in [-1, 1] (already normalized pixel values).
    """
    generator = torch.Generator().manual_seed(seed)
    background = torch.rand(3, size, size, generator=generator) * 2 - 1
    clip = background.repeat(frames, 1, 1, 1)
    side = max(size // 4, 1)
    for t in range(frames):
        x = (t * max(size - side, 1)) // max(frames - 1, 1)
        clip[t, :, size // 3: size // 3 + side, x: x + side] = torch.tensor([1.0, -1.0, 0.5])[:, None, None]
    return clip


def video_prompt(model, frames: int, text_before: list[int], text_after: list[int]) -> torch.Tensor:
    """``input_ids [1, L]``: text, the video placeholders, text."""
    video = [model.config.video_token_index] * video_token_count(model, frames)
    return torch.tensor([text_before + video + text_after])


def tiny_qwen_vl(family: str = "qwen2_vl", seed: int = 0, layers: int = 4, hidden: int = 64, heads: int = 4,
                 kv_heads: int = 2, vocab: int = 200, patch_size: int = 14, vision_hidden: int = 32,
                 vision_layers: int = 2):
    """A random-weight Qwen2-VL / Qwen2.5-VL / Qwen3-VL (``family``: its model type), eval mode, fp32.

    3-D rotary positions (M-RoPE, sections 2/3/3 of a 16-dim head), two frames per temporal patch,
    2x2 spatial patch merging. Token ids: video ``vocab - 2``, image ``vocab - 1``, vision start/end
    ``vocab - 4`` / ``vocab - 3``.
    """
    import transformers

    names = {"qwen2_vl": "Qwen2VL", "qwen2_5_vl": "Qwen2_5_VL", "qwen3_vl": "Qwen3VL"}
    if family not in names:
        raise ValueError(f"family={family!r} is not one of {sorted(names)}")
    prefix = names[family]
    torch.manual_seed(seed)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    if family == "qwen3_vl":
        rope["mrope_interleaved"] = True
    text = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                max_position_embeddings=4096, rope_parameters=rope)
    vision = dict(depth=vision_layers, hidden_size=vision_hidden, num_heads=2, patch_size=patch_size,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    if family == "qwen2_vl":
        vision.update(embed_dim=vision_hidden, mlp_ratio=2, hidden_size=hidden)
    elif family == "qwen2_5_vl":
        vision.update(intermediate_size=2 * vision_hidden, out_hidden_size=hidden, window_size=2 * patch_size * 2,
                      fullatt_block_indexes=[vision_layers - 1])
    else:
        vision.update(intermediate_size=2 * vision_hidden, out_hidden_size=hidden, num_position_embeddings=64,
                      deepstack_visual_indexes=[0])
    config_cls = getattr(transformers, f"{prefix}Config")
    config = config_cls(text_config=text, vision_config=vision, video_token_id=vocab - 2, image_token_id=vocab - 1,
                        vision_start_token_id=vocab - 4, vision_end_token_id=vocab - 3)
    config.get_text_config()._attn_implementation = "sdpa"
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config)
    return model.eval()


def _qwen_patches(model, clip: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """A clip ``[frames, 3, S, S]`` as the Qwen2-VL processor lays it out: patches ``[t*h*w, 3*2*p*p]`` in
    (temporal patch, merged row, merged column, 2x2) order, and its grid ``[t, h, w]`` in patches."""
    vision = model.config.vision_config
    patch, merge, temporal = vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
    frames, size = clip.shape[0], clip.shape[-1]
    if frames % temporal or size % (patch * merge):
        raise ValueError(f"frames={frames} must be a multiple of {temporal} and size={size} of {patch * merge}")
    t, side = frames // temporal, size // patch
    patches = clip.reshape(t, temporal, 3, side // merge, merge, patch, side // merge, merge, patch)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(t * side * side, 3 * temporal * patch * patch)
    return patches, [t, side, side]


def qwen_prompt(model, parts: list, seed: int = 0, timestamp_token: int = 9) -> dict[str, torch.Tensor]:
    """Inputs of a Qwen2-VL-family model for one prompt of ``parts``, in order: lists of text token ids,
    ``("video", frames, size)`` clips and ``("image", size)`` still images (a frame repeated over one
    temporal patch), each wrapped in vision start/end tokens; ``mm_token_type_ids`` 1 for image and 2
    for video placeholders, as the processor marks them. Where the layout record says frames are spans
    of their own (Qwen3-VL), each temporal patch of a video gets its own start/end tokens after a
    ``timestamp_token`` (the processor writes ``<t seconds>`` there)."""
    from .archs import layout_for

    config = model.config
    frame_spans = layout_for(config).frame_spans
    merge = config.vision_config.spatial_merge_size
    ids, kinds, media = [], [], {"image": ([], []), "video": ([], [])}
    for index, part in enumerate(parts):
        if isinstance(part, list):
            ids += part
            kinds += [0] * len(part)
            continue
        kind, *shape = part
        if kind == "video":
            clip = synthetic_clip(shape[0], shape[1], seed + index)
        else:
            clip = synthetic_clip(1, shape[0], seed + index).repeat(config.vision_config.temporal_patch_size, 1, 1, 1)
        patches, grid = _qwen_patches(model, clip)
        media[kind][0].append(patches)
        media[kind][1].append(grid)
        count = grid[0] * grid[1] * grid[2] // merge ** 2
        token = config.video_token_id if kind == "video" else config.image_token_id
        spans = grid[0] if kind == "video" and frame_spans else 1
        for _ in range(spans):
            stamp = [timestamp_token] if kind == "video" and frame_spans else []
            ids += stamp + [config.vision_start_token_id] + [token] * (count // spans) + [config.vision_end_token_id]
            kinds += [0] * len(stamp) + [0] + [2 if kind == "video" else 1] * (count // spans) + [0]
    inputs = dict(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                  mm_token_type_ids=torch.tensor([kinds]))
    for kind, key in (("video", "pixel_values_videos"), ("image", "pixel_values")):
        if media[kind][0]:
            inputs[key] = torch.cat(media[kind][0])
            inputs[f"{kind}_grid_thw"] = torch.tensor(media[kind][1])
    return inputs


def qwen_video_inputs(model, frames: int, size: int, text_before: list[int], text_after: list[int],
                      seed: int = 0) -> dict[str, torch.Tensor]:
    """One prompt ``text, <vision_start>, video placeholders, <vision_end>, text`` and its clip."""
    return qwen_prompt(model, [text_before, ("video", frames, size), text_after], seed=seed - 1)

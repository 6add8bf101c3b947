"""Tiny random-weight video-LLM checkpoints that load in transformers and in vLLM, written to a directory
(config, safetensors, a byte-level tokenizer built in code, processor and chat template; no hub).

vLLM's CPU attention takes head sizes >= 32: the text models have hidden 128, 4 heads, 2 KV heads.
Their weights are drawn wider than the default (``initializer_range=0.2``) so greedy decoding does not
repeat one token, which would make token equality a weak check.
"""

from __future__ import annotations

import os

import numpy as np
import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>", "<image>", "<video>"]
VOCAB = 320  # 256 byte symbols + the special tokens, rounded up

_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'video' %}VIDEO{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_TEMPLATE = _TEMPLATE.replace("VIDEO", "<video>\n")
QWEN_TEMPLATE = _TEMPLATE.replace("VIDEO", "<|vision_start|><|video_pad|><|vision_end|>")


def tokenizer(chat_template: str):
    """A byte-level tokenizer without merges: every byte a token, plus the special tokens."""
    from tokenizers import AddedToken
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {symbol: i for i, symbol in enumerate(sorted(ByteLevel.alphabet()))}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         chat_template=chat_template)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS], special_tokens=True)
    tok.model_max_length = 4096
    return tok


def _text_config(**overrides) -> dict:
    return {**dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6, initializer_range=0.2),
            **overrides}


def _save(model, tok, processor, out: str, rename=None) -> str:
    model.save_pretrained(out, safe_serialization=True)
    if rename is not None:
        from safetensors.torch import load_file, save_file

        path = os.path.join(out, "model.safetensors")
        save_file({rename(k): v.contiguous() for k, v in load_file(path).items()}, path, metadata={"format": "pt"})
    processor.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _eos(model, cfg, ids) -> None:
    for owner in (cfg, model.generation_config):
        owner.eos_token_id, owner.pad_token_id = ids["<|im_end|>"], ids["<|endoftext|>"]


def llava_onevision(out: str, seed: int = 0, **text) -> str:
    """SigLIP 64x64 frames of 8x8 patches pooled to 4x4: 16 tokens a frame, then the newline. ``text``: fields
    of the Qwen2 text config that differ from the tiny default (a wider LLM for the throughput benchmark)."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor)

    torch.manual_seed(seed)
    tok = tokenizer(LLAVA_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    size, patch, pinpoints = 64, 8, [[64, 64], [64, 128], [128, 64], [128, 128]]
    cfg = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=size, patch_size=patch, vision_use_head=False),
        text_config=dict(model_type="qwen2", **_text_config(**text)), image_token_index=ids["<image>"],
        video_token_index=ids["<video>"], vision_feature_select_strategy="full", vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints, vision_aspect_ratio="anyres_max_9", tie_word_embeddings=False)
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    _eos(model, cfg.text_config, ids)
    _eos(model, cfg, ids)
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size={"height": size, "width": size},
                                                     image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size={"height": size, "width": size}), tokenizer=tok,
        num_image_tokens=(size // patch) ** 2, vision_feature_select_strategy="full", chat_template=LLAVA_TEMPLATE,
        image_token="<image>", video_token="<video>", vision_aspect_ratio="anyres_max_9")

    def vllm_siglip_keys(key: str) -> str:  # transformers saves vision_tower.*, vLLM loads vision_tower.vision_model.*
        prefix = "vision_tower."
        return prefix + "vision_model." + key[len(prefix):] if key.startswith(prefix) and not key.startswith(
            prefix + "vision_model.") else key

    return _save(model, tok, processor, out, rename=vllm_siglip_keys)


def qwen2_5_vl(out: str, seed: int = 0) -> str:
    """Patches of 14, merged 2x2, two frames a temporal patch: a 112x112 frame pair is 16 tokens."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    torch.manual_seed(seed)
    tok = tokenizer(QWEN_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    cfg = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
                           out_hidden_size=128, tokens_per_second=2),
        text_config=_text_config(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                  "mrope_section": [4, 6, 6]},
                                 bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                                 pad_token_id=ids["<|endoftext|>"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    _eos(model, cfg, ids)
    size = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112 * 16}
    kwargs = dict(size=size, patch_size=14, temporal_patch_size=2, merge_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**kwargs), tokenizer=tok,
                                    video_processor=Qwen2VLVideoProcessor(**kwargs), chat_template=QWEN_TEMPLATE)
    return _save(model, tok, processor, out)


def qwen3_vl(out: str, seed: int = 0) -> str:
    """Patches of 16, merged 2x2, two frames a temporal patch, deepstack from the first block: a 128x128 frame
    pair is 16 tokens; the learned position grid is the 8x8 patch grid of a 128x128 frame."""
    from transformers import (Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration,
                              Qwen3VLProcessor, Qwen3VLVideoProcessor)

    torch.manual_seed(seed)
    tok = tokenizer(QWEN_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    cfg = Qwen3VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=128,
                           num_position_embeddings=64, deepstack_visual_indexes=[0]),
        text_config=_text_config(head_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                               "mrope_section": [6, 5, 5], "mrope_interleaved": True},
                                 bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                                 pad_token_id=ids["<|endoftext|>"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)
    model = Qwen3VLForConditionalGeneration(cfg).eval()
    _eos(model, cfg, ids)
    size = {"shortest_edge": 64 * 64, "longest_edge": 128 * 128 * 16}
    kwargs = dict(size=size, patch_size=16, temporal_patch_size=2, merge_size=2)
    # The released checkpoints normalise images as videos (mean = std = 0.5); vLLM normalises video frames on
    # the device with the image processor's values, so they must agree for the two engines to see one input.
    processor = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(**kwargs, image_mean=[0.5] * 3,
                                                                       image_std=[0.5] * 3), tokenizer=tok,
                                 video_processor=Qwen3VLVideoProcessor(**kwargs, do_sample_frames=False),
                                 chat_template=QWEN_TEMPLATE)
    return _save(model, tok, processor, out)


def video(frames: int, size: int, seed: int = 0) -> np.ndarray:
    """``[frames, size, size, 3]`` uint8: a random image drifting sideways, with noise (some tokens static)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.int64)
    clip = np.stack([np.roll(base, 3 * (t // 2), axis=1) for t in range(frames)])
    return (clip + rng.integers(-10, 10, clip.shape)).clip(0, 255).astype(np.uint8)


def metadata(frames: int, fps: float) -> dict:
    """What Qwen's processors need to number time: the frames are already sampled."""
    return {"total_num_frames": frames, "fps": fps, "duration": frames / fps, "frames_indices": list(range(frames)),
            "video_backend": "opencv"}

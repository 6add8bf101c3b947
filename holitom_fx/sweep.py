"""Support sweep: every transformers model class that takes ``pixel_values_videos``, built tiny, run once.

    python -m holitom_fx.sweep                         # every discovered class, Markdown table
    python -m holitom_fx.sweep --only llava_onevision qwen2_vl --json

For each generative class whose ``forward`` takes ``pixel_values_videos`` (found through transformers'
auto mappings), the sweep builds a tiny random-weight instance from the class's default config (every
sub-config shrunk generically: widths, depths, heads, vocabulary; special token ids remapped into the
small vocabulary, image/video placeholder ids the default leaves unset filled in), builds a video prompt
(pixel values in the layout the vision tower takes, the number of video placeholders learned from the
model's own ``get_video_features``), compiles it with
``HoliTomBackend(HoliTomConfig(retain_ratio=0.5, tau=0.8), compiler="eager").bind(model)`` (Dynamo's
settings are the backend's own: ``backend.DYNAMO_CAPTURE``) and runs a two-token greedy ``generate()``, the path users take.
Status per class:

* ``applied``: HoliTom merged (``backend.last_report`` set); token counts and whether the prefill ran
  on the shortened sequence;
* ``passed through``: ran, HoliTom did nothing; the reason from the backend's graph records; the
  prefill's last logits are compared with the uncompiled model's;
* ``failed``: an exception; re-run with a plain pass-through backend tells whether the model fails under
  ``torch.compile`` by itself or HoliTom's code raised (``ours``);
* ``not built``: no tiny instance or no video inputs could be made (reason given).

Nothing here edits a model or transformers: configs are built from their classes' defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import json
import math
import os
import re
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

APPLIED, PASSED, FAILED, NOT_BUILT = "applied", "passed through", "failed", "not built"

#: Generative auto mappings searched besides every ``*ForConditionalGeneration`` of any mapping.
GENERATIVE_MAPPINGS = ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES",
                       "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
                       "MODEL_FOR_VIDEO_TEXT_TO_TEXT_MAPPING_NAMES")

TEXT_WIDTH, VISION_LAYERS, TEXT_LAYERS, VOCAB = 64, 2, 4, 256
#: Window of sliding-window attention layers: the tiny prompts (40-80 tokens) still fill it after the merge, as
#: real video prompts fill real windows (``passes.sliding_window`` merges only then).
SLIDING_WINDOW = 16
FRAMES = 4  # frames of the clip (Qwen-style towers: temporal patches x temporal_patch_size)
SEED = 0

# Generic shrink targets: attribute -> value, set on every (sub-)config that has the attribute as an int.
_SHRINK = {
    "hidden_size": TEXT_WIDTH, "embed_dim": TEXT_WIDTH, "out_hidden_size": TEXT_WIDTH, "d_model": TEXT_WIDTH,
    "projection_dim": TEXT_WIDTH, "projector_hidden_size": TEXT_WIDTH, "projection_hidden_size": TEXT_WIDTH,
    "vision_output_dim": TEXT_WIDTH, "text_hidden_size": TEXT_WIDTH,
    "intermediate_size": 2 * TEXT_WIDTH, "encoder_ffn_dim": 2 * TEXT_WIDTH, "decoder_ffn_dim": 2 * TEXT_WIDTH,
    "num_attention_heads": 4, "num_heads": 4, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "kv_lora_rank": 16, "q_lora_rank": 16, "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8, "v_head_dim": 16, "qk_head_dim": 16,
    "moe_intermediate_size": TEXT_WIDTH, "shared_expert_intermediate_size": TEXT_WIDTH,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_k": 2, "n_shared_experts": 1, "moe_num_shared_experts": 1, "n_group": 1,
    "topk_group": 1,
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16, "linear_value_head_dim": 16,
    "linear_num_heads": 4, "linear_head_dim": 16, "moe_hidden_size": TEXT_WIDTH,
    "shared_experts_intermediate_size": TEXT_WIDTH,
    "adapter_in_dim": TEXT_WIDTH, "adapter_input_size": TEXT_WIDTH, "adapter_out_dim": TEXT_WIDTH,
    "max_position_embeddings": 2048, "max_window_layers": TEXT_LAYERS, "vision_hidden_size": TEXT_WIDTH,
}
#: Model types whose processor writes each temporal patch of a video in a span of its own (a timestamp or
#: frame markers between): their prompt is laid out that way first, as a user's would be.
FRAME_SPAN_PROCESSORS = frozenset({"qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "lfm3_vl", "minimax_m3_vl",
                                   "video_llama_3", "gemma4", "gemma4_unified"})
#: M-RoPE section (head_dim 128) the modeling code assumes when the config names none: Qwen's [t, h, w], or by
#: text model type; Ernie 4.5 VL interleaves h and w, so its first two sections must stay equal.
_QWEN_MROPE = [16, 24, 24]
_MROPE_DEFAULTS = {"ernie4_5_vl_moe_text": [22, 22, 20]}
#: ``(a, b)``: a default where ``a == b`` keeps them equal tiny (MHA stays MHA, validated by some configs;
#: MLA configs whose ``head_dim`` names the rotary slice).
_TIED = (("num_key_value_heads", "num_attention_heads"), ("head_dim", "qk_rope_head_dim"))
#: Fields a class's default config leaves unset though its model cannot be built or positioned without them:
#: model type -> tiny values. Qwen4-Exp's indexed-attention layers always build a QSA indexer from these; the
#: Omni thinkers' ``get_rope_index`` reads vision start/end ids their config classes do not declare (the
#: checkpoints' ``thinker_config`` carries Qwen2.5-Omni's).
_UNSET_FILL = {
    "qwen4_exp_text": {"indexer_n_heads": 4, "indexer_kv_heads": 1, "indexer_head_dim": 16, "indexer_budget": 16,
                       "indexer_compress_ratio": 4},
    "qwen2_5_omni_thinker": {"vision_start_token_id": 151652, "vision_end_token_id": 151653},
    "qwen3_omni_moe_thinker": {"vision_start_token_id": 151652, "vision_end_token_id": 151653},
}
_LAYER_ATTRS = ("num_hidden_layers", "depth", "num_layers", "encoder_layers", "decoder_layers", "n_layers")


@dataclass
class SweepResult:
    name: str
    model_types: list[str]
    status: str = NOT_BUILT
    reason: str = ""
    tokens: str = ""  # visual tokens in -> after outer -> after inner
    sequence: str = ""  # sequence in -> after outer -> after inner
    shortened_prefill: bool | None = None  # applied: the prefill ran on the merged sequence
    logits_match_eager: bool | None = None  # passed through: logits equal the uncompiled model's
    max_abs_diff: float | None = None
    ours: bool | None = None  # failed: HoliTom's code raised (the plain backend runs)
    params: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def time_budget(seconds: float | None):
    """Raise ``_Timeout`` in the main thread after ``seconds`` (SIGALRM; no budget elsewhere)."""
    if not seconds or not hasattr(signal, "SIGALRM") or os.name != "posix":
        yield
        return

    def handler(signum, frame):
        raise _Timeout(f"over the {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------------- discovery

def discover() -> dict[str, list[str]]:
    """Class name -> model types, for every generative class whose ``forward`` takes ``pixel_values_videos``."""
    import transformers
    from transformers.models.auto import modeling_auto

    found: dict[str, list[str]] = {}
    for attr in sorted(dir(modeling_auto)):
        if not (attr.startswith("MODEL_") and attr.endswith("_MAPPING_NAMES")):
            continue
        mapping = getattr(modeling_auto, attr)
        if not isinstance(mapping, dict):
            continue
        for model_type, names in mapping.items():
            for name in [names] if isinstance(names, str) else list(names):
                if not isinstance(name, str):
                    continue
                if not (name.endswith("ForConditionalGeneration") or attr in GENERATIVE_MAPPINGS):
                    continue
                if name in found:
                    if model_type not in found[name]:
                        found[name].append(model_type)
                    continue
                try:
                    cls = getattr(transformers, name)
                    parameters = inspect.signature(cls.forward).parameters
                except Exception:  # noqa: BLE001 - a class that cannot be imported is not swept
                    continue
                if "pixel_values_videos" in parameters:
                    found[name] = [model_type]
    return dict(sorted(found.items(), key=lambda item: item[1][0]))


def config_class(name: str, model_types: list[str]):
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cls = getattr(transformers, name)
    if getattr(cls, "config_class", None) is not None:
        return cls.config_class
    return CONFIG_MAPPING[model_types[0]]


# ------------------------------------------------------------------------------------------- tiny configs

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rotary_half(params: dict, head_dim: int) -> int:
    """Frequencies an M-RoPE section splits: half the rotated dims (a ``partial_rotary_factor`` rotates fewer)."""
    return int(head_dim * params.get("partial_rotary_factor", 1.0)) // 2


def _scaled_section(section: list[int], half: int) -> list[int]:
    """An M-RoPE section in the same proportions, summing to ``half``; every axis keeps a frequency (the sum is
    more than ``half`` only where ``half`` is under the number of axes)."""
    scaled = [max(1, (s * half) // sum(section)) for s in section]
    scaled[-1] = max(1, scaled[-1] + half - sum(scaled))
    return scaled


def _shrink_rope(d: dict, head_dim: int) -> None:
    for key in ("rope_parameters", "rope_scaling"):
        rope = d.get(key)
        if not isinstance(rope, dict):
            continue
        targets = [rope] + [v for v in rope.values() if isinstance(v, dict)]  # per-layer-type rope dicts
        for params in targets:
            section = params.get("mrope_section")
            if isinstance(section, list) and section and all(_is_int(s) for s in section):
                params["mrope_section"] = _scaled_section(section, _rotary_half({**d, **rope, **params}, head_dim))
            if _is_int(params.get("original_max_position_embeddings")):
                params["original_max_position_embeddings"] = min(params["original_max_position_embeddings"], 2048)


def _merged_patch_widths(d: dict) -> dict[str, int]:
    """Widths of ``d`` that are its vision tower's width x merge**2 (features of merge x merge patches
    concatenated: MuseGlimmer's ``out_hidden_size``), with that factor: they must stay so when shrunk."""
    vision = d.get("vision_config")
    if not isinstance(vision, dict) or not _is_int(width := vision.get("hidden_size")):
        return {}
    merge = vision.get("spatial_merge_size") or vision.get("merge_size")
    if not _is_int(merge) or merge < 2:
        return {}
    return {key: merge**2 for key in _SHRINK if d.get(key) == width * merge**2}


def _shrink_widths(d: dict) -> None:
    """``_SHRINK`` on one config (or per-layer override) dict; never above the default: a 0 is a feature the
    default leaves off (NoPE's ``qk_rope_head_dim``)."""
    tied = [(a, b) for a, b in _TIED if _is_int(d.get(a)) and d[a] == d.get(b)]
    for key, value in _SHRINK.items():
        if _is_int(d.get(key)):
            d[key] = min(d[key], value)
    for a, b in tied:
        d[a] = d[b]
    sizes = d.get("hidden_sizes")  # staged widths (conv pyramids): the ratios kept, the widest TEXT_WIDTH
    if isinstance(sizes, list) and sizes and all(_is_int(v) and v > 0 for v in sizes) and max(sizes) > TEXT_WIDTH:
        d["hidden_sizes"] = [max(1, v * TEXT_WIDTH // max(sizes)) for v in sizes]


def _layer_picks(d: dict, depth: int, layers: int) -> list[int]:
    """The default's layer each tiny layer copies: evenly spaced, then each kind of layer the spacing drops
    (full attention, Qwen4-Exp's indexed attention: their modules and caches) swapped in for a kind picked
    twice, from the last pick."""
    picks = [i * depth // layers for i in range(layers)]
    types = d.get("layer_types")
    if not isinstance(types, list) or len(types) != depth:
        return picks
    for kind in dict.fromkeys(types):
        kinds = [types[i] for i in picks]
        spare = [j for j in range(layers) if kinds.count(kinds[j]) > 1]
        if kind not in kinds and spare:
            picks[spare[-1]] = max(i for i, t in enumerate(types) if t == kind)
    return sorted(picks)


def _shrink_layers(d: dict, layers: int) -> None:
    """Depth, and what is given per layer (``*layer_types``, ``per_layer_config``) for the layers picked."""
    depth = next((d[key] for key in _LAYER_ATTRS if _is_int(d.get(key)) and d[key] > 0), None)
    for key in _LAYER_ATTRS:
        if _is_int(d.get(key)) and d[key] > 0:
            d[key] = layers
    if depth is None:
        return
    picks = _layer_picks(d, depth, layers)
    for key in [k for k in d if isinstance(k, str) and k.endswith("layer_types") and isinstance(d[k], list)]:
        if len(d[key]) == depth:
            d[key] = [d[key][i] for i in picks]
    per_layer = d.get("per_layer_config")
    if isinstance(per_layer, dict) and per_layer:  # overrides keyed by the default's layer index
        overrides = {int(k): v for k, v in per_layer.items()}
        d["per_layer_config"] = {i: overrides[src] for i, src in enumerate(picks) if src in overrides}
        for override in d["per_layer_config"].values():
            _shrink_widths(override)


def _default_rope(d: dict) -> None:
    """A default with layer types and an empty per-layer-type ``rope_parameters`` (the modeling code reads one
    entry per type): the library's default RoPE for each type."""
    if d.get("rope_parameters") == {} and isinstance(d.get("layer_types"), list):
        d["rope_parameters"] = {t: {"rope_type": "default", "rope_theta": 10000.0} for t in dict.fromkeys(d["layer_types"])}


def _shrink(d: dict, is_vision: bool) -> None:
    """Shrink one config dict in place (and its nested config dicts)."""
    layers = VISION_LAYERS if is_vision else TEXT_LAYERS
    merged = _merged_patch_widths(d)
    for key, value in list(d.items()):
        if isinstance(key, str) and isinstance(value, dict) and ("model_type" in value or key.endswith("_config")) \
                and key != "per_layer_config":
            _shrink(value, is_vision=is_vision or "vision" in key or "visual" in key or "patch_size" in value)
    _shrink_widths(d)
    for key, value in _UNSET_FILL.get(d.get("model_type"), {}).items():
        if d.get(key) is None:
            d[key] = value
    for key, factor in merged.items():
        d[key] = d["vision_config"]["hidden_size"] * factor
    for key in list(d):
        if isinstance(key, str) and key.startswith("vocab_size") and _is_int(d[key]) and d[key] > VOCAB:
            d[key] = VOCAB
    _shrink_layers(d, layers)
    _default_rope(d)
    if _is_int(d.get("patch_size")) and _is_int(d.get("image_size")):
        d["image_size"] = 4 * d["patch_size"]
    if isinstance(d.get("image_size"), (list, tuple)) and _is_int(d.get("patch_size")):
        d["image_size"] = [4 * d["patch_size"]] * len(d["image_size"])
    for key in ("deepstack_visual_indexes", "intermediate_layers_indices"):
        if isinstance(d.get(key), list):
            d[key] = list(range(min(len(d[key]), VISION_LAYERS)))
    if _is_int(d.get("insert_layer_id")):  # a vision layer index (MiniCPM-V's window merger), set on the top config too
        d["insert_layer_id"] = min(d["insert_layer_id"], VISION_LAYERS - 1)
    if isinstance(d.get("fullatt_block_indexes"), list):
        d["fullatt_block_indexes"] = [VISION_LAYERS - 1]
    for key in ("vision_feature_layer",):
        if isinstance(d.get(key), list):
            kept = [i for i in d[key] if _is_int(i) and -VISION_LAYERS <= i < VISION_LAYERS]
            d[key] = kept or [-1]
        elif _is_int(d.get(key)) and not -VISION_LAYERS <= d[key] < VISION_LAYERS:
            d[key] = -1
    if _is_int(d.get("sliding_window")):
        sliding = any("sliding" in str(kind) for kind in d.get("layer_types") or ())
        d["sliding_window"] = min(d["sliding_window"], SLIDING_WINDOW if sliding else 4096)
    if _is_int(d.get("head_dim")):
        _shrink_rope(d, d["head_dim"])
    elif _is_int(d.get("hidden_size")) and _is_int(d.get("num_attention_heads")):
        _shrink_rope(d, d["hidden_size"] // d["num_attention_heads"])


def _is_token_field(key: str, aliases: frozenset[str] = frozenset()) -> bool:
    return key.endswith(("_token_id", "_token_index", "_token_ids")) or key in aliases


def _token_aliases(config_cls) -> frozenset[str]:
    """Fields a config class also exposes under a token-id name (Molmo2's ``image_patch_id`` is its
    ``video_token_id``): token ids like the rest."""
    classes = [config_cls, *(getattr(config_cls, "sub_configs", None) or {}).values()]
    return frozenset(field for c in classes for name, field in getattr(c, "attribute_map", {}).items()
                     if _is_token_field(name))


def _token_keys(d: dict, aliases: frozenset[str], path=()):
    for key, value in d.items():
        if not isinstance(key, str) or key in ("id2label", "label2id"):
            continue
        if isinstance(value, dict):
            yield from _token_keys(value, aliases, path + (key,))
        elif _is_token_field(key, aliases) or key in ("image_token", "video_token"):
            yield path + (key,), value


def _remap_tokens(d: dict, aliases: frozenset[str]) -> dict[int, int]:
    """Special token ids outside the tiny vocabulary -> ``VOCAB - 1, VOCAB - 2, ...`` (same id, same new id)."""
    ids = []
    for _, value in _token_keys(d, aliases):
        for v in value if isinstance(value, list) else [value]:
            if _is_int(v) and v >= VOCAB - 64 and v not in ids:
                ids.append(v)
    mapping = {old: VOCAB - 1 - i for i, old in enumerate(sorted(ids))}
    if len(mapping) > 48:
        raise RuntimeError(f"{len(mapping)} special token ids do not fit a {VOCAB}-token vocabulary")

    def apply(node: dict) -> None:
        for key, value in node.items():
            if not isinstance(key, str) or key in ("id2label", "label2id"):
                continue
            if isinstance(value, dict):
                apply(value)
            elif _is_token_field(key, aliases):
                if _is_int(value):
                    node[key] = mapping.get(value, value)
                elif isinstance(value, list):
                    node[key] = [mapping.get(v, v) if _is_int(v) else v for v in value]

    apply(d)
    return mapping


_PLACEHOLDERS = re.compile(r"(image|video)_token_(id|index)")


def _fill_placeholders(d: dict, aliases: frozenset[str]) -> None:
    """Image/video placeholder ids the default config leaves unset (the checkpoint or its tokenizer sets them:
    MiniCPM-V, Nemotron-Omni) -> free ids at the top of the vocabulary, so the modality's path runs."""
    used = {v for _, value in _token_keys(d, aliases) for v in (value if isinstance(value, list) else [value])
            if _is_int(v)}
    free = (i for i in range(VOCAB - 1, 0, -1) if i not in used)
    chosen: dict[str, int] = {}  # one id per field name, whichever sub-config names it
    for path, value in list(_token_keys(d, aliases)):
        if value is None and _PLACEHOLDERS.fullmatch(path[-1]):
            node = d
            for key in path[:-1]:
                node = node[key]
            if path[-1] not in chosen:
                chosen[path[-1]] = next(free)
            node[path[-1]] = chosen[path[-1]]


def _add_vision_config(config_cls, d: dict) -> None:
    """Default an optional vision sub-config that the class's default leaves out (Gemma 4: text only)."""
    from transformers import PretrainedConfig

    for key, sub_cls in (getattr(config_cls, "sub_configs", None) or {}).items():
        if d.get(key) is None and ("vision" in key or "video" in key) and issubclass(sub_cls, PretrainedConfig):
            d[key] = sub_cls().to_dict()


def tiny_config(config_cls):
    """The class's default config, every sub-config shrunk, special token ids inside the vocabulary."""
    default = config_cls()
    d = default.to_dict()
    _add_vision_config(config_cls, d)
    _shrink(d, is_vision=False)
    aliases = _token_aliases(config_cls)
    _remap_tokens(d, aliases)
    _fill_placeholders(d, aliases)
    for key in ("transformers_version", "architectures", "_name_or_path", "auto_map"):
        d.pop(key, None)
    config = config_cls(**d)
    for sub in _sub_configs(config):  # M-RoPE whose section is the modeling code's default, sized for head_dim 128
        rope = getattr(sub, "rope_parameters", None)
        if "mrope_section" not in getattr(type(sub), "ignore_keys_at_rope_validation", ()) or not isinstance(rope, dict):
            continue
        head_dim = getattr(sub, "head_dim", None) or sub.hidden_size // sub.num_attention_heads
        for params in [v for v in rope.values() if isinstance(v, dict)] or [rope]:  # per layer type, or one
            half = _rotary_half({**rope, **params}, head_dim)
            params.setdefault("mrope_section", _scaled_section(_MROPE_DEFAULTS.get(sub.model_type, _QWEN_MROPE), half))
    return config


def build_tiny(name: str, model_types: list[str]):
    import transformers

    cls = getattr(transformers, name)
    config = tiny_config(config_class(name, model_types))
    if getattr(cls, "_supports_sdpa", False):  # else transformers' own choice (eager): sdpa asked of it raises
        with contextlib.suppress(Exception):
            config._attn_implementation = "sdpa"
    torch.manual_seed(SEED)
    model = cls(config).eval().float()
    return model


# ----------------------------------------------------------------------------------------------- inputs

def _sub_configs(config) -> list:
    from transformers import PretrainedConfig

    out, stack = [], [config]
    while stack:
        c = stack.pop()
        out.append(c)
        for value in vars(c).values():
            if isinstance(value, PretrainedConfig):
                stack.append(value)
    return out


def vision_config(config):
    """The sub-config that describes the video/vision tower (has a patch size)."""
    candidates = [c for c in _sub_configs(config) if c is not config and _is_int(getattr(c, "patch_size", None))]
    by_name = [c for c in candidates if "video" in type(c).__name__.lower()]
    by_vision = [c for c in candidates if "vision" in type(c).__name__.lower()]
    return (by_name or by_vision or candidates or [None])[0]


def _token_id(config, *attrs: str) -> int | None:
    for c in _sub_configs(config):
        for attr in attrs:
            if _is_int(getattr(c, attr, None)):
                return getattr(c, attr)
    return None


def video_token_id(config) -> int | None:
    return _token_id(config, "video_token_id", "video_token_index")


def _special_ids(config) -> set[int]:
    ids = set()
    for c in _sub_configs(config):
        aliases = _token_aliases(type(c))
        for key, value in vars(c).items():
            if _is_token_field(key, aliases):
                for v in value if isinstance(value, list) else [value]:
                    if _is_int(v):
                        ids.add(v)
    return ids


def _features_count(features: Any) -> int:
    from transformers.utils import ModelOutput

    if isinstance(features, ModelOutput):
        pooled = getattr(features, "pooler_output", None)
        features = pooled if pooled is not None else features[0]
    if isinstance(features, torch.Tensor):
        return features.numel() // features.shape[-1]
    if isinstance(features, (list, tuple)):
        return sum(_features_count(f) for f in features)
    raise TypeError(f"get_video_features returned {type(features).__name__}")


def _get_video_features(model, pixels: dict):
    """The model's video encoder entry; the inner model's where only it names every pixel input (VideoLLaMA3's
    ``video_merge_sizes``, MiniCPM-V's ``target_sizes_videos`` behind an outer ``*args, **kwargs``)."""
    found = [fn for owner in (model, getattr(model, "model", None))
             if callable(fn := getattr(owner, "get_video_features", None))]
    named = [fn for fn in found if set(pixels) <= set(inspect.signature(fn).parameters)]
    return (named or found or [None])[0]


def _first_int(vc, attrs: tuple[str, ...]) -> int | None:
    """The first of ``attrs`` that ``vc`` sets to an int (of a per-axis pair, the first entry)."""
    for attr in attrs:
        value = getattr(vc, attr, None)
        value = value[0] if isinstance(value, (list, tuple)) and value else value
        if _is_int(value):
            return value
    return None


def _positioned_patches(frames: int, side: int, edge: int, channels: int, generator) -> dict[str, torch.Tensor]:
    """Gemma 4 style: each frame a sequence of ``edge``-pixel patches, their ``(x, y)`` on the patch grid."""
    n = side // edge
    xy = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="xy"), dim=-1).reshape(n * n, 2)
    return dict(pixel_values_videos=torch.randn(frames, n * n, channels * edge * edge, generator=generator),
                video_position_ids=xy.repeat(frames, 1, 1), num_frames_per_video=torch.tensor([frames]))


def _pooled_frames(vc, channels: int, patch: int, generator, pool: int = 3) -> dict[str, torch.Tensor]:
    """Molmo2 style: each frame's patches as rows (as many as the tower has learned positions), and the patch
    indices of the ``pool x pool`` window each video token pools (the video processor's default window)."""
    side = math.isqrt(vc.num_position_embeddings)
    cells = side // pool
    grid = torch.arange(side * side).reshape(side, side)[:cells * pool, :cells * pool]
    windows = grid.reshape(cells, pool, cells, pool).permute(0, 2, 1, 3).reshape(-1, pool * pool)
    return dict(pixel_values_videos=torch.randn(FRAMES, side * side, channels * patch * patch, generator=generator),
                video_token_pooling=torch.cat([windows + frame * side * side for frame in range(FRAMES)]),
                video_grids=torch.tensor([[FRAMES, cells, cells]]))


def pixel_layouts(model) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """Candidate ``pixel_values_videos`` (and the grid or positions the forward needs) for a ``FRAMES``-frame
    clip, likeliest first: the config does not name every layout detail, so ``build_inputs`` keeps the first
    the model's own video encoder accepts."""
    vc = vision_config(model.config)
    if vc is None:
        raise RuntimeError("no vision sub-config with a patch size")
    patch = vc.patch_size
    channels = getattr(vc, "in_channels", None) or getattr(vc, "num_channels", None) or 3
    declared = _first_int(vc, ("temporal_patch_size", "patch_temporal"))
    temporal = declared or 1
    merge = _first_int(vc, ("spatial_merge_size", "merge_size", "merge_kernel_size", "pooling_kernel_size"))
    forward = inspect.signature(model.forward).parameters
    generator = torch.Generator().manual_seed(SEED)
    if "video_merge_sizes" in forward:
        # VideoLLaMA3: one frame per temporal step, flat patches, the merge size an input (processor default 2)
        side, merge = 8, 2
        pixels = torch.randn(FRAMES * side * side, channels * patch * patch, generator=generator)
        grid = torch.tensor([[FRAMES, side, side]])
        return [("flat patches", dict(pixel_values_videos=pixels, video_grid_thw=grid,
                                      video_merge_sizes=torch.tensor([merge])))]
    if "target_sizes_videos" in forward:
        # MiniCPM-V: NaViT-packed, the frames' patch rows side by side, a patch grid per frame; two 2x2 merges
        # (window merger, merger) leave 2x2 tokens a frame
        side = 8
        pixels = torch.randn(1, channels, patch, FRAMES * side * side * patch, generator=generator)
        return [("packed frames", dict(pixel_values_videos=pixels,
                                       target_sizes_videos=torch.tensor([[side, side]] * FRAMES)))]
    if "video_token_pooling" in forward:
        return [("pooled frames", _pooled_frames(vc, channels, patch, generator))]
    if merge and (declared or "video_grid_thw" in forward):  # Qwen-VL style: patches in rows + video_grid_thw
        t, side = max(FRAMES // temporal, 1), 4 * merge
        pixels = torch.randn(t * side * side, channels * temporal * patch * patch, generator=generator)
        grid = dict(video_grid_thw=torch.tensor([[t, side, side]]))
        if "video_second_per_grid" in forward:  # the Omni thinkers position a video's frames in time by it
            grid["video_second_per_grid"] = torch.tensor([1.0])
        layouts = [("flat patches", dict(pixel_values_videos=pixels, **grid))]
        if temporal == 1:  # Kimi-K2.5: each row a [C, p, p] image for a Conv2d
            layouts.append(("patch images", dict(pixel_values_videos=pixels.view(-1, channels, patch, patch), **grid)))
        return layouts
    if "video_position_ids" in forward:  # patches of the tower's size, or pre-merged to the pooling kernel's
        k = merge or 1
        return [(f"{edge}-pixel patches", _positioned_patches(FRAMES, 4 * k * patch, edge, channels, generator))
                for edge in dict.fromkeys((patch, k * patch))]
    size = getattr(vc, "image_size", None)
    size = size[0] if isinstance(size, (list, tuple)) else size
    if not _is_int(size):
        size = 4 * patch
    from .tiny import synthetic_clip

    clip = synthetic_clip(FRAMES, size, SEED)
    if channels != 3:
        clip = clip[:, :1].repeat(1, channels, 1, 1)
    tubelet = getattr(vc, "video_temporal_patch_size", None)
    if _is_int(tubelet):  # Nemotron-Omni (RADIO): tubelets of consecutive frames stacked on the channels
        return [("tubelets", dict(pixel_values_videos=clip.reshape(1, FRAMES // tubelet, tubelet * channels, size,
                                                                     size)))]
    return [("clip", dict(pixel_values_videos=clip[None]))]


def _video_features_count(model, layouts) -> tuple[dict[str, torch.Tensor], int]:
    """The first pixel layout the model's ``get_video_features`` runs on, and how many features it gives."""
    errors = []
    for label, pixels in layouts:
        fn = _get_video_features(model, pixels)
        if fn is None:
            raise RuntimeError("no get_video_features to count the video's tokens")
        accepted = inspect.signature(fn).parameters
        try:
            with torch.no_grad():
                return pixels, _features_count(fn(**{k: v for k, v in pixels.items()
                                                      if k in accepted or k == "pixel_values_videos"}))
        except _Timeout:
            raise
        except Exception as err:  # noqa: BLE001 - next layout
            if len(layouts) == 1:
                raise
            errors.append(f"{label}: {_first_line(err)}")
    raise RuntimeError("no pixel layout ran the video encoder: " + " / ".join(errors))


def _image_token_id(config) -> int | None:
    return _token_id(config, "image_token_id", "image_token_index")


def _processor_spans(model, pixels: dict) -> int:
    """The spans the processor always splits the clip into: one per frame for packed frames (MiniCPM-V wraps
    each in ``<image>`` markers) and positioned patches (Gemma 4), one per tubelet (Nemotron-Omni's ``<img>``
    chunks), one per pooled frame (Molmo2's ``<frame_start>``/``<frame_end>``); else 1."""
    if "target_sizes_videos" in pixels:
        return len(pixels["target_sizes_videos"])
    if "video_grids" in pixels:
        return int(pixels["video_grids"][0, 0])
    if _is_int(getattr(vision_config(model.config), "video_temporal_patch_size", None)):
        return pixels["pixel_values_videos"].shape[1]
    if "num_frames_per_video" in pixels and getattr(model.config, "model_type", None) in FRAME_SPAN_PROCESSORS:
        return int(pixels["num_frames_per_video"].sum())  # Gemma 4: a timestamp and markers per frame
    return 1


def _markers(config, kind: str) -> tuple[list[int], list[int]] | None:
    """``kind``'s start and end token ids as a layout's opening and closing, where the config names both."""
    start, end = _token_id(config, f"{kind}_start_token_id"), _token_id(config, f"{kind}_end_token_id")
    return ([start], [end]) if start is not None and end is not None else None


def _vision_spans(layouts: list, opening: list[int], closing: list[int]) -> list:
    """Each one-span layout tried first between the vision start and end tokens, as Qwen's processors write a
    span: the Omni thinkers position a video only after its start token (text positions without). Only one
    span: a layout's opening and closing enclose all its spans, Qwen's markers each."""
    wrapped = []
    for label, placeholder, n, start, end in layouts:
        if n == 1 and not start:
            wrapped.append((f"{label}, between vision start/end", placeholder, n, opening, closing))
        wrapped.append((label, placeholder, n, start, end))
    return wrapped


def build_inputs(model) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, str]:
    """A prompt ``text + video placeholders + text``, the video's pixel values; the uncompiled model's logits.

    The pixel layout is the first candidate the model's ``get_video_features`` runs on, the placeholder count
    what it returns. Prompt layouts are tried in order until the uncompiled model runs: one span per frame or
    tubelet with a text token between, where the processor always splits the clip so (``_processor_spans``);
    the video token in one span; one span per temporal patch (Qwen3-VL's timestamps; first where the model's
    processor writes that, ``FRAME_SPAN_PROCESSORS``); the image token instead (GLM-4.1V and Nemotron-Omni mark
    video frames with it), also between the video start and end tokens (GLM-5-Next tells video from image
    frames by them); each one-span layout first between the vision start and end tokens (``_vision_spans``).
    Returns ``(inputs, eager logits, layout)``.
    """
    config = model.config
    token = video_token_id(config)
    if token is None:
        raise RuntimeError("the config names no video token id")
    pixels, count = _video_features_count(model, pixel_layouts(model))
    specials = _special_ids(config)
    text = [i for i in range(1, VOCAB) if i not in specials][:9]
    forward = inspect.signature(model.forward).parameters
    layouts = [("one span", token, 1, [], [])]
    units = _processor_spans(model, pixels)
    if units > 1 and count % units == 0:
        layouts.insert(0, (f"{units} spans, as the processor splits the clip", token, units, [], []))
    groups = int(pixels["video_grid_thw"][0, 0]) if "video_grid_thw" in pixels else 1
    if groups > 1 and count % groups == 0:
        per_patch = (f"{groups} spans, one per temporal patch", token, groups, [], [])
        layouts.insert(0, per_patch) if getattr(config, "model_type", None) in FRAME_SPAN_PROCESSORS \
            else layouts.append(per_patch)
    image = _image_token_id(config)
    if image is not None and image != token:
        images = [(f"image token{', ' + label if n > 1 else ''}", image, n, [], []) for label, _, n, _, _ in layouts]
        video = _markers(config, "video")
        if video is not None:  # GLM-5-Next: image tokens are frames only inside these
            images += [(f"{label} inside video start/end", image, n, *video) for label, _, n, _, _ in images]
        layouts += images
    vision = _markers(config, "vision")
    if vision is not None:
        layouts = _vision_spans(layouts, *vision)
    errors = []
    for label, placeholder, n, opening, closing in layouts:
        span = [placeholder] * (count // n)
        middle = sum(([text[8]] + span if i else span for i in range(n)), [])
        ids = torch.tensor([text[:3] + opening + middle + closing + text[3:8]])
        inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), **pixels)
        if "mm_token_type_ids" in forward:
            inputs["mm_token_type_ids"] = (ids == placeholder).long() * 2
        inputs = {k: v for k, v in inputs.items() if k in forward}
        try:
            with torch.no_grad():
                return inputs, _logits(model(**inputs)), label
        except _Timeout:
            raise
        except Exception as err:  # noqa: BLE001 - next layout
            errors.append(f"{label}: {_first_line(err)}")
    raise RuntimeError(f"{count} video features; no prompt layout ran eagerly: " + " / ".join(errors))


# -------------------------------------------------------------------------------------------------- runs

def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    if len(lines) > 1 and lines[0].rstrip().endswith(":"):  # validation errors say what on the next line
        text += " " + lines[1].strip()
    # Dynamo wraps a backend's exception: name the original one
    inner = err.__cause__ or getattr(err, "inner_exception", None)
    if inner is not None and inner is not err and type(err).__name__ == "BackendCompilerFailed":
        text = f"BackendCompilerFailed <- {_first_line(inner)}"
    return text[:300]


_OURS = (os.path.dirname(os.path.abspath(__file__)), os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "passes"))


def raised_in_holitom(err: BaseException) -> bool:
    """Whether the innermost frames of ``err`` (or its cause) lie in holitom_fx or passes (not this module)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        for frame in traceback.extract_tb(err.__traceback__):
            path = os.path.abspath(frame.filename)
            if path.startswith(_OURS) and not path.endswith("sweep.py"):
                return True
        err = err.__cause__ or err.__context__
    return False


def _traceback_head(err: BaseException, lines: int = 6) -> list[str]:
    frames = traceback.extract_tb(err.__traceback__)[-lines:]
    return [f"{os.path.relpath(f.filename) if 'site-packages' not in f.filename else f.filename.split('site-packages/')[-1]}"
            f":{f.lineno} {f.name}" for f in frames]


def _logits(out) -> torch.Tensor | None:
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        logits = out[0]
    return logits


def _generate_first_logits(model, inputs) -> torch.Tensor:
    """Logits of the prefill's last position ``[B, vocab]`` of a two-token greedy ``generate()``: the path
    users take (transformers 5 encodes the video before the prefill, positions come from generate)."""
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    return out.logits[0]


def _compiled_run(model, inputs, backend) -> torch.Tensor:
    import torch._dynamo

    torch._dynamo.reset()
    model.compile(backend=backend)
    try:
        return _generate_first_logits(model, inputs)
    finally:
        model._compiled_call_impl = None  # the model back to eager for what follows


def sweep_one(name: str, model_types: list[str], build_budget: float = 60, run_budget: float = 300,
              config=None) -> SweepResult:
    """Build ``name`` tiny, run it once under HoliTom, classify."""
    import torch._dynamo

    from . import HoliTomBackend, HoliTomConfig

    result = SweepResult(name=name, model_types=list(model_types))
    start = time.perf_counter()
    torch._dynamo.reset()
    try:
        try:
            with time_budget(build_budget):
                model = build_tiny(name, model_types)
        except BaseException as err:  # noqa: BLE001
            if isinstance(err, KeyboardInterrupt):
                raise
            result.reason = f"cannot be built tiny: {_first_line(err)}"
            return result
        result.params = sum(p.numel() for p in model.parameters())
        if result.params > 40_000_000:
            result.reason = f"cannot be built tiny: {result.params / 1e6:.0f} M parameters after shrinking"
            return result
        try:
            with time_budget(build_budget):
                inputs, eager, layout = build_inputs(model)
        except BaseException as err:  # noqa: BLE001
            if isinstance(err, KeyboardInterrupt):
                raise
            result.reason = f"failed to build inputs: {_first_line(err)}"
            return result

        backend = HoliTomBackend(config or HoliTomConfig(retain_ratio=0.5, tau=0.8), compiler="eager").bind(model)
        try:
            with time_budget(run_budget):
                out = _compiled_run(model, inputs, backend)
        except BaseException as err:  # noqa: BLE001
            if isinstance(err, KeyboardInterrupt):
                raise
            result.status = FAILED
            result.reason = _first_line(err)
            result.notes = _traceback_head(err)
            ours = raised_in_holitom(err)
            try:
                with time_budget(run_budget):
                    _compiled_run(model, inputs, lambda gm, _: gm.forward)
                plain = "the plain backend runs"
                ours = True
            except BaseException as plain_err:  # noqa: BLE001
                if isinstance(plain_err, KeyboardInterrupt):
                    raise
                plain = f"fails with the plain backend too: {_first_line(plain_err)}"
            result.ours = ours
            result.reason += f" ({plain})"
            return result

        logits = out
        report = backend.last_report
        if report is not None:
            result.status = APPLIED
            result.tokens = f"{report.tokens_in} -> {report.tokens_after_outer} -> {report.tokens_after_inner}"
            result.sequence = " -> ".join(str(n) for n in report.sequence_length)
            result.shortened_prefill = report.sequence_length[2] < report.sequence_length[0]
            boundary = re.search(r"target=([\w.<>]+)", report.boundary or "")
            result.reason = f"boundary {boundary.group(1) if boundary else report.boundary}; saliency: {report.saliency}; inner layer {report.inner_layer}"
        else:
            result.status = PASSED
            reasons = []
            for record in backend.graphs:
                fallback = record.fallback.strip().splitlines()[0] if record.fallback else None
                for text in ([f"fallback: {fallback}"] if fallback else []) + list(record.notes):
                    if text not in reasons:
                        reasons.append(text)
            result.reason = "; ".join(reasons) or "no reason recorded by the backend"
            if layout != "one span":
                result.reason += f" (prompt: {layout})"
            eager = eager[:, -1] if eager is not None else None
            if logits is not None and eager is not None and logits.shape == eager.shape:
                diff = (logits - eager).abs().max().item()
                result.max_abs_diff = diff
                result.logits_match_eager = bool(torch.allclose(logits, eager, rtol=0, atol=1e-5))
            else:
                result.logits_match_eager = False
        result.notes = [f"prompt: {layout}"] + [f"graph {i}: {r.nodes} nodes, rewrites {r.rewrites}" + (f", fallback: {r.fallback}"
                                                                               if r.fallback else "")
                        for i, r in enumerate(backend.graphs)]
        return result
    finally:
        result.seconds = round(time.perf_counter() - start, 1)
        torch._dynamo.reset()


def sweep(names: list[str] | None = None, progress=None, **kwargs) -> list[SweepResult]:
    classes = discover()
    if names:
        wanted = set(names)
        classes = {k: v for k, v in classes.items() if k in wanted or wanted & set(v)}
    results = []
    for name, model_types in classes.items():
        results.append(sweep_one(name, model_types, **kwargs))
        if progress:
            progress(results[-1])
    return results


# ------------------------------------------------------------------------------------------------ output

def markdown(results: list[SweepResult]) -> str:
    import transformers

    lines = [f"transformers {transformers.__version__}, torch {torch.__version__}, "
             f"{datetime.date.today().isoformat()}; `HoliTomConfig(retain_ratio=0.5, tau=0.8)`, a two-token greedy "
             f"`generate()` under `model.compile(backend=HoliTomBackend(...).bind(model))`, Dynamo as the backend "
             f"sets it.", "",
             "| class | model type | status | visual tokens (in -> outer -> inner) | sequence | reason / notes | s |",
             "|---|---|---|---|---|---|---:|"]
    for r in results:
        reason = r.reason.replace("|", "\\|")
        if r.status == APPLIED:
            reason += f"; prefill shortened: {'yes' if r.shortened_prefill else 'NO'}"
        elif r.status == PASSED:
            reason += f"; logits == eager: {'yes' if r.logits_match_eager else 'NO'}"
        elif r.status == FAILED:
            reason += "; raised in HoliTom" if r.ours else "; the model's own failure under torch.compile"
        lines.append(f"| `{r.name}` | {', '.join(r.model_types)} | {r.status} | {r.tokens} | {r.sequence} | "
                     f"{reason} | {r.seconds} |")
    counts = {s: sum(r.status == s for r in results) for s in (APPLIED, PASSED, FAILED, NOT_BUILT)}
    lines += ["", ", ".join(f"{s}: {n}" for s, n in counts.items()) + f" (of {len(results)})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="class names or model types (default: every discovered class)")
    parser.add_argument("--json", action="store_true", help="JSON list of results instead of the Markdown table")
    parser.add_argument("--json-out", help="also write the JSON list of results to this file")
    parser.add_argument("--list", action="store_true", help="only list the discovered classes")
    parser.add_argument("--run-budget", type=float, default=300, help="seconds per class for compile + run")
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("holitom_fx").setLevel(logging.ERROR)
    if args.list:
        for name, types in discover().items():
            print(name, ", ".join(types))
        return 0
    start = time.perf_counter()
    results = sweep(args.only, run_budget=args.run_budget,
                    progress=lambda r: print(f"[{r.seconds:6.1f} s] {r.name}: {r.status}: {r.reason[:160]}",
                                             file=sys.stderr, flush=True))
    print(json.dumps([asdict(r) for r in results], indent=1) if args.json else markdown(results))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    print(f"sweep took {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

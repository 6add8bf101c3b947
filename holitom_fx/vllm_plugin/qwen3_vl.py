"""Qwen3-VL in vLLM with HoliTom's outer stage: each video's ``T*N`` rows become ``round(r*T*N)``, each merged
token inside its representative's frame span (after that frame's ``<t seconds>`` timestamp) at its
representative's (t, h, w), the deepstack features merged with the same weights: the sequence the graph
passes build in transformers.

How many tokens each frame's span holds depends on the merge, which runs after vLLM has fixed the prompt.
vLLM's own pruning path for Qwen3-VL (EVS) already meets that: the prompt reserves the whole video span
(timestamps, markers and the retained count, all counted as the video's embedding rows), and the model
fills it, frame by frame, with the counts the pruning produced and the timestamps' own text embeddings
(``_create_final_video_embeddings``). This model merges with HoliTom where EVS prunes, and hands that
function the merged tokens with their representatives, whose (t, h, w) it reads as EVS reads its kept
tokens'. The runner's M-RoPE recompute hook then numbers the prompt (the switch: see ``qwen2_5_vl``).
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.qwen3_vl import (Qwen3VLDummyInputsBuilder, Qwen3VLForConditionalGeneration,
                                                 Qwen3VLMultiModalProcessor, Qwen3VLProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing import PromptReplacement

from .common import (check_exact_positions, holitom_config, merge_video, merged_video_tokens,
                     switch_on_position_recompute)


class HoliTomQwen3VLMultiModalProcessor(Qwen3VLMultiModalProcessor):
    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        """Each video's span as EVS reserves it: every frame's timestamp and markers, the merged count in the
        first frame's span, the whole span the video's embedding rows (the model fills it)."""
        config = holitom_config(self.info.get_hf_config())
        hf_config = self.info.get_hf_config()
        merge = self.info.get_image_processor(**hf_processor_mm_kwargs).merge_size
        tokenizer = self.info.get_tokenizer()

        def video_replacement(item_idx: int):
            item = out_mm_kwargs["video"][item_idx]
            frames, height, width = map(int, item["video_grid_thw"].data)
            merged = merged_video_tokens(frames, height * width // merge**2, 0, config)
            return Qwen3VLMultiModalProcessor.get_video_repl(
                tokens_per_frame=[merged] + [0] * (frames - 1), timestamps=item["timestamps"].data,
                tokenizer=tokenizer, vision_start_token_id=hf_config.vision_start_token_id,
                vision_end_token_id=hf_config.vision_end_token_id, video_token_id=hf_config.video_token_id)

        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        return [u for u in updates if u.modality != "video"] + [
            PromptReplacement(modality="video", target=next(u.target for u in updates if u.modality == "video"),
                              replacement=video_replacement)]


@MULTIMODAL_REGISTRY.register_processor(HoliTomQwen3VLMultiModalProcessor, info=Qwen3VLProcessingInfo,
                                        dummy_inputs=Qwen3VLDummyInputsBuilder)
class HoliTomQwen3VLForConditionalGeneration(Qwen3VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = "model"):
        settings = holitom_config(vllm_config.model_config.hf_config)
        switch_on_position_recompute(vllm_config.model_config.multimodal_config, settings)  # read by __init__
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.holitom = settings

    def _postprocess_video_embeds_evs(self, video_embeds_split, video_input) -> tuple[torch.Tensor, ...]:
        """Each video merged, its tokens in their representatives' frames (in merge order within a frame, as
        ``ops.place_by_frame`` places them), then laid out with the timestamps by vLLM's own function."""
        merge = self.visual.spatial_merge_size
        width = self.config.vision_config.out_hidden_size
        out = []
        for rows, size, timestamps in zip(video_embeds_split, video_input["video_grid_thw"].tolist(),
                                          video_input.timestamps):
            frames, height, grid_width = size
            per_frame = height * grid_width // merge**2
            grid = rows.reshape(frames, per_frame, -1)
            deepstack = grid[..., width:] if grid.shape[-1] > width else None
            merged = merge_video(grid[..., :width].contiguous(), self.holitom, deepstack)
            order = torch.sort(merged.positions // per_frame, stable=True).indices  # frame-major
            representatives = merged.positions[order]
            tokens = merged.tokens[order] if deepstack is None else torch.cat(
                [merged.tokens[order], merged.carried[order]], dim=1)
            counts = torch.bincount(representatives // per_frame, minlength=frames).tolist()
            embeds = self._create_final_video_embeddings(
                video_embeddings=tokens, num_tokens_per_frame=counts, timestamps=timestamps, video_grid_thw=size,
                retention_mask=representatives)  # indexes the unpruned positions: each token's representative's
            check_exact_positions(embeds[:, -5:-2].max(), embeds.dtype)
            out.append(embeds)
        return tuple(out)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        """vLLM 0.32's recompute (``evs.recompute_mrope_positions``) takes the first ``<|vision_start|>`` after
        the computed tokens as the start of a video's frames. Transformers >= 5.10 processors keep the prompt's
        own ``<|vision_start|>`` before the per-frame spans, which it would take instead, numbering the whole
        span from the wrong place. Those outer markers (a ``<|vision_start|>`` not followed by a frame's or an
        image's tokens) are hidden from it; they are text, numbered as text either way."""
        ids = torch.as_tensor(input_ids, device=mrope_positions.device, dtype=torch.long).clone()
        config = self.config
        inner = torch.tensor([config.video_token_id, config.image_token_id, config.vision_end_token_id],
                             device=ids.device)
        outer = (ids[:-1] == config.vision_start_token_id) & ~torch.isin(ids[1:], inner)
        ids[:-1][outer] = -1
        return super().recompute_mrope_positions(ids, multimodal_embeddings, mrope_positions, num_computed_tokens)


"""Qwen2.5-VL in vLLM with HoliTom's outer stage: each video's ``T*N`` rows become ``round(r*T*N)``, in
HoliTom's order, every merged token at its representative's (t, h, w).

vLLM numbers a prompt's M-RoPE positions before the vision tower runs; a pruned video renumbers them
through the model's ``recompute_mrope_positions`` hook (vLLM's EVS path): the embeddings carry four
position channels that the hook strips. That hook runs only where the model runner's pruning switch is
on: this model turns it on (``multimodal_config.video_pruning_rate``, which nothing else reads here since
the processor and the model below replace EVS); vLLM 0.32's CPU runner never reads it, which
``cpu_runner.enable_pruning_hook`` makes up for.
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.qwen2_5_vl import (Qwen2_5_VLDummyInputsBuilder, Qwen2_5_VLForConditionalGeneration,
                                                   Qwen2_5_VLMultiModalProcessor, Qwen2_5_VLProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing import PromptReplacement
from vllm.multimodal.video_prune.evs import compute_mrope_for_media

from .common import (check_exact_positions, holitom_config, merge_video, merged_video_tokens,
                     switch_on_position_recompute)



class HoliTomQwen2_5_VLProcessingInfo(Qwen2_5_VLProcessingInfo):
    def get_num_video_tokens(self, *, image_width: int, image_height: int, num_frames: int, image_processor,
                             mm_kwargs) -> int:
        vision = self.get_hf_config().vision_config
        temporal = vision.temporal_patch_size
        frames = max((num_frames + (-num_frames % temporal)) // temporal, 1)  # padded as the video processor does
        unmerged = super().get_num_video_tokens(image_width=image_width, image_height=image_height,
                                                num_frames=num_frames, image_processor=image_processor,
                                                mm_kwargs=mm_kwargs)
        return merged_video_tokens(frames, unmerged // frames, 0, holitom_config(self.get_hf_config()))


class HoliTomQwen2_5_VLMultiModalProcessor(Qwen2_5_VLMultiModalProcessor):
    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        config = holitom_config(self.info.get_hf_config())
        merge = self.info.get_image_processor(**hf_processor_mm_kwargs).merge_size
        video_token = self.info.get_tokenizer().get_vocab()[
            self.info.get_hf_processor(**hf_processor_mm_kwargs).video_token]

        def video_replacement(item_idx: int) -> list[int]:
            frames, height, width = map(int, out_mm_kwargs["video"][item_idx]["video_grid_thw"].data)
            return [video_token] * merged_video_tokens(frames, height * width // merge**2, 0, config)

        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        return [u for u in updates if u.modality != "video"] + [
            PromptReplacement(modality="video", target=[video_token], replacement=video_replacement)]


@MULTIMODAL_REGISTRY.register_processor(HoliTomQwen2_5_VLMultiModalProcessor, info=HoliTomQwen2_5_VLProcessingInfo,
                                        dummy_inputs=Qwen2_5_VLDummyInputsBuilder)
class HoliTomQwen2_5_VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.holitom = holitom_config(vllm_config.model_config.hf_config)
        multimodal = vllm_config.model_config.multimodal_config
        switch_on_position_recompute(multimodal, self.holitom)
        self.video_pruning_rate = multimodal.video_pruning_rate
        self.is_multimodal_pruning_enabled = True

    def _postprocess_video_embeds_evs(self, video_embeds_split, video_input) -> tuple[torch.Tensor, ...]:
        """Each video merged, its rows followed by their representatives' (t, h, w, grid width) channels,
        as vLLM's EVS path hands them to ``recompute_mrope_positions``."""
        seconds = video_input.get("second_per_grid_ts")
        if seconds is None:
            raise ValueError("HoliTom needs second_per_grid_ts to number the merged video's time positions")
        merge = self.visual.spatial_merge_size
        out = []
        # seconds per temporal patch as they are (vLLM's EVS truncates them to whole seconds first, which puts
        # every frame of a clip faster than 1 s a patch at t = 0; transformers and vLLM's own numbering do not)
        for rows, (frames, height, width), second in zip(video_embeds_split, video_input["video_grid_thw"].tolist(),
                                                         seconds.tolist()):
            grid = rows.reshape(frames, height * width // merge**2, -1)
            merged = merge_video(grid, self.holitom)
            tokens, representatives = merged.tokens, merged.positions
            positions = compute_mrope_for_media(torch.tensor([frames, height, width]), merge,
                                                tokens_per_second=self.config.vision_config.tokens_per_second,
                                                video_second_per_grid=second)
            check_exact_positions(positions.max(), tokens.dtype)
            out.append(torch.cat([tokens, positions.to(tokens.device)[representatives].to(tokens.dtype)], dim=1))
        return tuple(out)

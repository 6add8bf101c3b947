"""LLaVA-OneVision in vLLM with HoliTom's outer stage: ``T*N + 1`` video rows (the frames' pooled
features, then the newline) become ``round(r*T*N) + 1``, in HoliTom's order (the compact sequence the
graph passes build), at vLLM's 1-D positions."""

from __future__ import annotations

import torch
from vllm.model_executor.models.llava_onevision import (LlavaOnevisionDummyInputsBuilder,
                                                        LlavaOnevisionForConditionalGeneration,
                                                        LlavaOnevisionMultiModalProcessor,
                                                        LlavaOnevisionProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY

from .common import holitom_config, merge_video, merged_video_tokens

NEWLINE_TOKENS = 1  # the image newline after each video: passed through


class HoliTomLlavaOnevisionProcessingInfo(LlavaOnevisionProcessingInfo):
    def get_num_video_tokens(self, *, image_width: int, image_height: int, num_frames: int) -> int:
        per_frame = self._get_num_frame_tokens(image_width=image_width, image_height=image_height)
        return merged_video_tokens(num_frames, per_frame, NEWLINE_TOKENS, holitom_config(self.get_hf_config()))


@MULTIMODAL_REGISTRY.register_processor(LlavaOnevisionMultiModalProcessor, info=HoliTomLlavaOnevisionProcessingInfo,
                                        dummy_inputs=LlavaOnevisionDummyInputsBuilder)
class HoliTomLlavaOnevisionForConditionalGeneration(LlavaOnevisionForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.holitom = holitom_config(vllm_config.model_config.hf_config)

    def _process_video_pixels(self, inputs) -> list[torch.Tensor]:
        pixels = inputs["pixel_values_videos"]
        frames = [pixels.shape[1]] * pixels.shape[0] if isinstance(pixels, torch.Tensor) else [len(v) for v in pixels]
        merged = []
        for video, num_frames in zip(super()._process_video_pixels(inputs), frames):
            rows = video.reshape(-1, video.shape[-1])
            grid_rows = rows.shape[0] - NEWLINE_TOKENS
            if grid_rows % num_frames:
                raise RuntimeError(f"{grid_rows} video features are not {num_frames} frames of equal size")
            grid = rows[:grid_rows].reshape(num_frames, grid_rows // num_frames, -1)
            tokens = merge_video(grid, self.holitom).tokens
            merged.append(torch.cat([tokens, rows[grid_rows:].to(tokens.dtype)]))
        return merged

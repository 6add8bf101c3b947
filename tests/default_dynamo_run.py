"""Run one of the design's plain entry points in a fresh process with Dynamo's default settings; print JSON.

    python -m tests.default_dynamo_run forward|generate|string|qwen3_generate

Used by ``test_entry_points.py``: a test process has Dynamo settings of its own, this one has none.
"""

from __future__ import annotations

import json
import logging
import sys

import torch
import torch._dynamo


def main(mode: str) -> dict:
    defaults = {name: getattr(torch._dynamo.config, name)
                for name in ("capture_scalar_outputs", "capture_dynamic_output_shape_ops")}
    from holitom_fx.tiny import qwen_video_inputs, synthetic_clip, tiny_llava_onevision, tiny_qwen_vl, video_prompt

    if mode == "qwen3_generate":
        model = tiny_qwen_vl("qwen3_vl")
        inputs = qwen_video_inputs(model, 4, 56, [1, 2, 3], [5, 6, 7])
    else:
        model = tiny_llava_onevision()
        ids = video_prompt(model, 4, [1, 2, 3], [5, 6, 7])
        inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                      pixel_values_videos=synthetic_clip(4, model.config.vision_config.image_size, 0)[None])
    with torch.no_grad():
        if mode == "string":  # torch.compile finds the backend through its entry point: no import of ours
            torch.compile(model, backend="holitom")(**inputs)
        elif mode == "forward":
            from holitom_fx import holitom_backend
            torch.compile(model, backend=holitom_backend)(**inputs)
        else:
            from holitom_fx import holitom_backend
            model.compile(backend=holitom_backend)
            model.generate(**inputs, max_new_tokens=4, do_sample=False)
    from holitom_fx import holitom_backend
    report = holitom_backend.last_report
    return dict(defaults=defaults, fallbacks=holitom_backend.fallbacks,
                report=None if report is None else dict(tokens_in=report.tokens_in,
                                                        tokens_after_outer=report.tokens_after_outer,
                                                        sequence_length=list(report.sequence_length)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("holitom_fx").setLevel(logging.INFO)
    print("RESULT " + json.dumps(main(sys.argv[1])))

"""HoliTom on a video LLM, end to end: visual tokens per stage, segments, prefill time, generated tokens.

    python examples/run_video.py                                   # tiny random LLaVA-OneVision, clip made in code
    python examples/run_video.py --video ../shared/data/jobs.mp4   # frames decoded with PyAV, sampled uniformly
    python examples/run_video.py --model llava-hf/llava-onevision-qwen2-7b-ov-hf --video clip.mp4 --frames 32

With ``--model`` the checkpoint and its processor are loaded with transformers (local path or hub id);
without it a tiny random-weight model is built in code, so the output tokens are meaningless but
every stage, count and timing is real.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
import torch._dynamo

import holitom_fx
from holitom_fx import HoliTomConfig
from holitom_fx.tiny import synthetic_clip, tiny_llava_onevision, video_prompt

log = logging.getLogger("run_video")


def read_frames(path: str, frames: int, size: int) -> torch.Tensor:
    """``frames`` frames sampled uniformly from a video file, ``[T, 3, size, size]`` uint8 (PyAV)."""
    import av

    with av.open(path) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not decoded:
        raise ValueError(f"{path}: no video frames")
    picks = torch.linspace(0, len(decoded) - 1, frames).round().long().tolist()
    clip = torch.stack([torch.from_numpy(decoded[i]) for i in picks]).permute(0, 3, 1, 2)
    return torch.nn.functional.interpolate(clip.float(), size=(size, size), mode="bilinear").to(torch.uint8)


def tiny_inputs(model, clip: torch.Tensor | None, frames: int):
    size = model.config.vision_config.image_size
    pixels = synthetic_clip(frames, size) if clip is None else clip.float() / 127.5 - 1
    ids = video_prompt(model, frames, [1, 2, 3], [5, 6, 7, 8, 9])
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixels[None])


def checkpoint_inputs(model_id: str, clip: torch.Tensor, question: str):
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    processor = AutoProcessor.from_pretrained(model_id)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(model_id, torch_dtype="auto").eval()
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(videos=[clip], text=prompt, return_tensors="pt")
    return model, processor, dict(inputs)


def prefill_seconds(model, inputs, repeats: int) -> float:
    with torch.no_grad():
        model(**inputs)  # compile
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", help="video file (default: a clip made in code)")
    parser.add_argument("--model", help="checkpoint id or path (default: tiny random LLaVA-OneVision)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--retain-ratio", type=float, default=0.25)
    parser.add_argument("--tau", type=float, default=0.8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--question", default="What happens in this video?")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("torch").setLevel(logging.ERROR)
    torch._dynamo.config.capture_scalar_outputs = True

    if args.model:
        if not args.video:
            parser.error("--model needs --video")
        from transformers import LlavaOnevisionForConditionalGeneration

        model, processor, inputs = checkpoint_inputs(args.model, read_frames(args.video, args.frames, 384),
                                                     args.question)
        fresh = lambda: LlavaOnevisionForConditionalGeneration.from_pretrained(  # noqa: E731
            args.model, torch_dtype="auto").eval()
    else:
        processor = None
        model = tiny_llava_onevision(layers=8, hidden=128, image_size=112)
        clip = read_frames(args.video, args.frames, model.config.vision_config.image_size) if args.video else None
        inputs = tiny_inputs(model, clip, args.frames)
        fresh = lambda: tiny_llava_onevision(layers=8, hidden=128, image_size=112)  # noqa: E731

    config = HoliTomConfig(retain_ratio=args.retain_ratio, tau=args.tau)
    vanilla = fresh()
    vanilla.compile(backend="inductor")
    vanilla_s = prefill_seconds(vanilla, inputs, args.repeats)

    torch._dynamo.reset()
    backend = holitom_fx.compile(model, config)
    holitom_s = prefill_seconds(model, inputs, args.repeats)
    report = backend.last_report
    out = model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False)

    print(f"\nHoliTom {config}")
    print(f"frames: {report.frames}   segments: {report.segments[0]}   saliency: {report.saliency}")
    print(f"visual tokens: {report.tokens_in} -> {report.tokens_after_outer} (outer) -> "
          f"{report.tokens_after_inner} (inner, layer {report.inner_layer})")
    print(f"sequence: {report.sequence_length[0]} -> {report.sequence_length[1]} -> {report.sequence_length[2]}")
    print(f"prefill (median of {args.repeats}, CPU, both Inductor-compiled): vanilla {vanilla_s * 1e3:.1f} ms, "
          f"HoliTom {holitom_s * 1e3:.1f} ms, {vanilla_s / holitom_s:.2f}x")
    new = out[0, inputs["input_ids"].shape[1]:]
    print("generated:", processor.decode(new, skip_special_tokens=True) if processor else new.tolist())


if __name__ == "__main__":
    main()

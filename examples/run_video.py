"""HoliTom on a video LLM, end to end: a picture of what it did to the clip, then one summary block.

    python examples/run_video.py                                   # tiny random LLaVA-OneVision, clip made in code
    python examples/run_video.py --video ../shared/data/jobs.mp4   # frames decoded with PyAV, sampled uniformly
    python examples/run_video.py --model llava-hf/llava-onevision-qwen2-7b-ov-hf --video clip.mp4 --frames 32

It writes ``holitom_video.png`` (``--out``): every frame, its temporal segment, and each visual token
kept, merged or dropped by HoliTom's outer stage, drawn over the frame (``examples/holitom_picture.py``);
then it prints the segments, the visual tokens per stage and the prefill time without and with HoliTom.

With ``--model`` the checkpoint and its processor are loaded with transformers (local path or hub id);
without it a tiny random-weight model is built in code, so the generated tokens are meaningless but
every stage, count and timing is real.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch._dynamo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # holitom_picture, next to this file

import holitom_fx  # noqa: E402
from holitom_fx import HoliTomConfig  # noqa: E402
from holitom_fx.archs import layout_for  # noqa: E402
from holitom_fx.backend import HoliTomReport  # noqa: E402
from holitom_fx.ops import attention_received, feature_saliency, pool_saliency  # noqa: E402
from holitom_fx.tiny import synthetic_clip, tiny_llava_onevision, video_prompt  # noqa: E402
from holitom_picture import FATES, TokenFates, draw, token_fates  # noqa: E402

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


def prefill_seconds(models: list, inputs, repeats: int) -> list[float]:
    """Best of ``repeats`` timed prefills per model, after one that compiles. The models take turns, so that
    other load on the machine falls on both alike; the best is the run it disturbed least."""
    with torch.no_grad():
        for model in models:
            model(**inputs)  # compile
        best = [float("inf")] * len(models)
        for _ in range(repeats):
            for i, model in enumerate(models):
                start = time.perf_counter()
                model(**inputs)
                best[i] = min(best[i], time.perf_counter() - start)
    return best


def frame_grid(model, inputs, report: HoliTomReport) -> tuple[torch.Tensor, torch.Tensor]:
    """The first video's frame-grid features ``[T, N, E]`` the merge received, and the saliency ``[T, N]`` the
    report says ranked them, recomputed eagerly (LLaVA-OneVision: ``get_video_features``; the attention
    received in the encoder layer feeding the projector, from that layer's own q/k, pooled like the features)."""
    config = model.config
    layout = layout_for(config)
    frames, per_frame = report.frames, layout.tokens_per_frame(config)
    tower = model.get_submodule(layout.vision_tower)
    layers = next(m for name, m in tower.named_modules() if name.endswith("encoder.layers"))  # SigLIP's layer stack
    index = layout.saliency_layer(config)
    attention = layers[len(layers) - 1 if index is None else index].self_attn
    received = []

    def read_qk(module, args, kwargs, output):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        shape = (*hidden.shape[:-1], -1, module.head_dim)
        query, key = (proj(hidden).view(shape).transpose(1, 2) for proj in (module.q_proj, module.k_proj))
        received.append(attention_received(query, key, mask, module.scale))

    hook = attention.register_forward_hook(read_qk, with_kwargs=True)
    try:
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):  # the model is compiled in place
            pooled = model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"]).pooler_output
    finally:
        hook.remove()
    features = pooled[0, :frames * per_frame].reshape(frames, per_frame, -1)
    if not report.saliency.startswith("vision attention"):
        return features, feature_saliency(features)
    grid = layout.saliency_grid(config)
    saliency = pool_saliency(received[0][:frames], grid.drop_leading, grid.side, grid.pooled_side, grid.mode)
    return features, saliency


def check_against_report(fates: TokenFates, report: HoliTomReport, per_frame: int) -> int:
    """The eager merge must be the one the compiled prefill ran: same segments, same token count.
    Returns the pass-through tokens per video (LLaVA-OneVision's newline)."""
    pass_through = report.tokens_in // report.videos - report.frames * per_frame
    if fates.segments != report.segments[0] or fates.kept + pass_through != report.tokens_after_outer // report.videos:
        raise RuntimeError(f"the picture's merge (segments {fates.segments}, {fates.kept} kept) is not the compiled "
                           f"run's (segments {report.segments[0]}, {report.tokens_after_outer} after the outer stage)")
    return pass_through


@dataclass
class Run:
    """What ``main`` did: the backend's report, the picture, the timings, the summary block printed."""

    report: HoliTomReport
    fates: TokenFates
    picture: str
    vanilla_s: float
    holitom_s: float
    summary: str


def summary_block(config: HoliTomConfig, report: HoliTomReport, fates: TokenFates, pass_through: int, per_frame: int,
                  clip: str, vanilla_s: float, holitom_s: float, repeats: int, generated: str, picture: str) -> str:
    segments = ", ".join(f"{start}-{end}" for start, end in fates.segments)
    fate_counts = ", ".join(f"{fates.count(f)} {FATES[f][0]}" for f in sorted(FATES))
    speed = vanilla_s / holitom_s
    lines = [
        "── HoliTom summary " + "─" * 60,
        f"clip           {report.frames} frames ({clip}), {per_frame} visual tokens per frame"
        + (f" + {pass_through} newline" if pass_through else ""),
        f"config         retain_ratio={config.retain_ratio} tau={config.tau} beta={config.beta} "
        f"inner_ratio={config.inner_ratio} budget={config.budget!r}; saliency: {report.saliency}",
        f"segments       {len(fates.segments)}: frames {segments}",
        f"visual tokens  {report.tokens_in} -> {report.tokens_after_outer} (outer stage, before the LLM) -> "
        f"{report.tokens_after_inner} (inner stage, decoder layer {report.inner_layer})",
        f"  outer stage  per token: {fate_counts}",
        f"sequence       {report.sequence_length[0]} -> {report.sequence_length[1]} -> {report.sequence_length[2]} "
        "tokens (prompt, after outer, after inner)",
        f"prefill        vanilla {vanilla_s * 1e3:.1f} ms, HoliTom {holitom_s * 1e3:.1f} ms: "
        f"{speed:.2f}x {'faster' if speed >= 1 else 'slower'} (best of {repeats} on {_device_name()}, "
        "both Inductor-compiled)",
        f"generate       {generated}",
        f"picture        {picture} ({os.path.getsize(picture) // 1024} KB)",
        "─" * 78,
    ]
    return "\n".join(lines)


def _device_name() -> str:
    threads = torch.get_num_threads()
    return f"CPU, {threads} thread{'s' if threads > 1 else ''}"


def main(argv: list[str] | None = None) -> Run:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", help="video file (default: a clip made in code)")
    parser.add_argument("--model", help="checkpoint id or path (default: tiny random LLaVA-OneVision)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--retain-ratio", type=float, default=0.15,
                        help="share of the T*N frame-grid tokens the outer stage keeps (0.15: the picture of the "
                             "default clip shows every fate; the paper reports 0.1 to 0.25)")
    parser.add_argument("--tau", type=float, default=0.8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed prefills per model (the best is reported)")
    parser.add_argument("--question", default="What happens in this video?")
    parser.add_argument("--out", default="holitom_video.png", help="the picture (PNG) to write")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("matplotlib") is None:  # before minutes of compiling, not after
        raise SystemExit("examples/run_video.py draws its picture with matplotlib: pip install -e '.[bench]' "
                         "(the README's set-up installs it)")
    torch._dynamo.config.capture_scalar_outputs = True

    if args.model:
        if not args.video:
            parser.error("--model needs --video")
        from transformers import LlavaOnevisionForConditionalGeneration

        clip = read_frames(args.video, args.frames, 384)
        model, processor, inputs = checkpoint_inputs(args.model, clip, args.question)
        fresh = lambda: LlavaOnevisionForConditionalGeneration.from_pretrained(  # noqa: E731
            args.model, torch_dtype="auto").eval()
        clip_name = os.path.basename(args.video)
    else:
        processor = None
        model = tiny_llava_onevision(layers=8, hidden=128, image_size=112)
        clip = read_frames(args.video, args.frames, model.config.vision_config.image_size) if args.video else None
        inputs = tiny_inputs(model, clip, args.frames)
        if clip is None:  # the pixels the model sees, back to an image
            clip = ((inputs["pixel_values_videos"][0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        fresh = lambda: tiny_llava_onevision(layers=8, hidden=128, image_size=112)  # noqa: E731
        clip_name = os.path.basename(args.video) if args.video else \
            "made in code: a square moving over a still background"

    config = HoliTomConfig(retain_ratio=args.retain_ratio, tau=args.tau)
    vanilla = fresh()
    vanilla.compile(backend="inductor")
    backend = holitom_fx.compile(model, config)
    vanilla_s, holitom_s = prefill_seconds([vanilla, model], inputs, args.repeats)
    report = backend.last_report
    out = model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:]
    generated = repr(processor.decode(new, skip_special_tokens=True)) if processor else \
        f"{new.numel()} new tokens decoded after the merged prefill (random weights: the ids carry no text)"

    # The report holds counts and segments; the picture needs each token's fate: the same merge, run eagerly.
    per_frame = layout_for(model.config).tokens_per_frame(model.config)
    features, saliency = frame_grid(model, inputs, report)
    fates = token_fates(features, saliency, config)
    pass_through = check_against_report(fates, report, per_frame)
    title = (f"HoliTom on {report.frames} frames x {per_frame} tokens (retain_ratio={config.retain_ratio}, "
             f"tau={config.tau}): {len(fates.segments)} segment{'s' if len(fates.segments) > 1 else ''}, {report.frames * per_frame} -> {fates.kept} "
             f"tokens before the LLM\n(" + (f"+{pass_through} newline; " if pass_through else "")
             + f"the inner stage then keeps {report.tokens_after_inner} from decoder layer {report.inner_layer})"
             + ("; random-weight model: its features, not the pixels, decide what is static" if not args.model else ""))
    picture = os.path.abspath(draw(clip, fates, title, args.out))

    summary = summary_block(config, report, fates, pass_through, per_frame, clip_name, vanilla_s, holitom_s,
                            args.repeats, generated, picture)
    print("\n" + summary)
    return Run(report=report, fates=fates, picture=picture, vanilla_s=vanilla_s, holitom_s=holitom_s, summary=summary)


class _Once(logging.Filter):
    """Each distinct log line once (the backend says the same line at every prefill of the timing loop)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Once())
    logging.getLogger("torch").setLevel(logging.ERROR)
    main()

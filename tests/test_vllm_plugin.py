"""HoliTom's outer stage inside vLLM (``holitom_fx.vllm_plugin``), run for real on vLLM's CPU build.

Tiny checkpoints are written to a temporary directory (``holitom_fx.tiny_checkpoints``); vLLM loads the plugin
through its ``vllm.general_plugins`` entry point (the package must be installed in vLLM's environment:
``.ci/run`` does so in a virtualenv of its own). Each check compares vLLM's greedy tokens with
transformers + holitom_fx on the same weights and settings (batch 1, fp32, outer stage only, feature-norm
saliency on both sides), and the prompt's length with text + merged tokens.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: keeps the engine near 2 GB
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process (starts in seconds)
vllm = pytest.importorskip("vllm", reason="vLLM is not installed here (.ci/run tests it in a virtualenv of its own)")

from holitom_fx import HoliTomBackend, HoliTomConfig  # noqa: E402
from holitom_fx.vllm_plugin.common import holitom_config, merged_video_tokens  # noqa: E402

from holitom_fx import tiny_checkpoints  # noqa: E402

SETTINGS = {"retain_ratio": 0.25, "tau": 0.8}
CONFIG = HoliTomConfig(**SETTINGS, inner_layer="off")
NEW_TOKENS = 12
LLAVA = "HoliTomLlavaOnevisionForConditionalGeneration"
QWEN = "HoliTomQwen2_5_VLForConditionalGeneration"
QWEN3 = "HoliTomQwen3VLForConditionalGeneration"
QWEN_FPS = 4.0  # Qwen2.5-VL, 8 frames of 112x112 at 4 fps: time positions 0..3 stay within the spatial 0..3, where
# transformers and vLLM number the text after a video alike (see docs/vllm.md)
QUESTION = "What happens in the video?"


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return tiny_checkpoints.llava_onevision(str(tmp_path_factory.mktemp("llava_onevision")))


def engine(path: str, architecture: str | None, settings: dict | None = None, **kwargs):
    overrides = {} if architecture is None else {"architectures": [architecture], "holitom": settings or SETTINGS}
    return vllm.LLM(model=path, dtype="float32", max_model_len=4096, enforce_eager=True, seed=0,
                    distributed_executor_backend="uni", hf_overrides=overrides,
                    limit_mm_per_prompt={"video": 1, "image": 0}, **kwargs)


def prompt(path: str) -> str:
    from transformers import AutoProcessor

    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    return AutoProcessor.from_pretrained(path).apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def is_qwen(path: str) -> bool:
    return "qwen" in os.path.basename(path)


def vllm_greedy(llm, path: str, videos: list) -> list[tuple[int, list[int]]]:
    """(prompt length, greedy tokens) of each request, all sent in one ``generate`` call."""
    params = vllm.SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    if is_qwen(path):  # Qwen's processors number time from the clip's metadata; its frames are sampled already
        videos = [(v, {**tiny_checkpoints.metadata(len(v), QWEN_FPS), "do_sample_frames": False}) for v in videos]
    outputs = llm.generate([{"prompt": prompt(path), "multi_modal_data": {"video": v}} for v in videos], params,
                           use_tqdm=False)
    return [(len(o.prompt_token_ids), list(o.outputs[0].token_ids)) for o in outputs]


@torch.no_grad()
def transformers_greedy(path: str, clip, config: HoliTomConfig | None) -> tuple[int, list[int], object]:
    """(prompt length after merging, greedy tokens, backend) of transformers, with holitom_fx when ``config``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    backend = None
    if config is not None:
        torch._dynamo.reset()  # each test's model compiles afresh: transformers' shared forward wrapper would
        # otherwise reach Dynamo's recompile limit across the file's models and run eagerly, unmerged
        backend = HoliTomBackend(config, compiler="eager").bind(model)
        model.compile(backend=backend)
    extra = {"video_metadata": [tiny_checkpoints.metadata(len(clip), QWEN_FPS)]} if is_qwen(path) else {}
    inputs = processor(text=[prompt(path)], videos=[clip], return_tensors="pt", **extra)
    generation = copy.deepcopy(model.generation_config)
    generation.eos_token_id, generation.do_sample = [-1], False  # run to the end, as vLLM's ignore_eos
    out = model.generate(**inputs, generation_config=generation, max_new_tokens=NEW_TOKENS)
    length = inputs["input_ids"].shape[1]
    merged = length if backend is None else backend.last_report.sequence_length[1]
    return merged, out[0, length:].tolist(), backend


def test_settings_are_validated_at_start_up():
    class HF:
        holitom = {"retain_ratio": 0.1, "tau": 0.8}

    assert holitom_config(HF).retain_ratio == 0.1 and holitom_config(HF).inner_layer == "off"
    for bad, field in [({"retain_ratio": 1.5}, "retain_ratio"), ({"inner_layer": 16}, "inner_layer"),
                       ({"budget": "reference"}, "budget"), ({"retian_ratio": 0.1}, "retian_ratio")]:
        HF.holitom = bad
        with pytest.raises(ValueError, match=field):
            holitom_config(HF)


def test_a_bad_setting_stops_the_engine_at_start_up(llava_dir):
    with pytest.raises(Exception, match="retain_ratio"):
        engine(llava_dir, LLAVA, {"retain_ratio": 2.0})


def test_llava_onevision_without_holitom_equals_transformers(llava_dir):
    """The baseline: the tiny checkpoint decodes the same in both engines before HoliTom is switched on."""
    clip = tiny_checkpoints.video(8, 64)
    [(length, tokens)] = vllm_greedy(engine(llava_dir, None), llava_dir, [clip])
    expected_length, expected, _ = transformers_greedy(llava_dir, clip, None)
    assert (length, tokens) == (expected_length, expected)


@pytest.fixture(scope="module")
def llava_engine(llava_dir):
    return engine(llava_dir, LLAVA, max_num_seqs=4)


def test_llava_onevision_merges_like_holitom_fx(llava_dir, llava_engine):
    clip = tiny_checkpoints.video(8, 64)
    [(length, tokens)] = vllm_greedy(llava_engine, llava_dir, [clip])
    expected_length, expected, backend = transformers_greedy(llava_dir, clip, CONFIG)
    report = backend.last_report
    assert report.saliency == "feature norm" and report.inner_layer is None
    text = report.sequence_length[0] - report.tokens_in  # the prompt without the video (its newline included)
    assert length == text + merged_video_tokens(8, 16, 1, CONFIG) == expected_length
    assert report.tokens_after_outer == round(0.25 * 8 * 16) + 1 < report.tokens_in == 8 * 16 + 1
    assert tokens == expected


def test_llava_onevision_batch_and_frame_counts_each_equal_their_single_run(llava_dir, llava_engine):
    """Several requests with different videos and different frame counts in one engine and one batch."""
    clips = [tiny_checkpoints.video(8, 64, seed=1), tiny_checkpoints.video(8, 64, seed=2),
             tiny_checkpoints.video(4, 64, seed=3), tiny_checkpoints.video(6, 64, seed=4)]
    together = vllm_greedy(llava_engine, llava_dir, clips)
    alone = [vllm_greedy(llava_engine, llava_dir, [clip])[0] for clip in clips]
    assert together == alone
    assert [length for length, _ in together] == [alone[0][0]] * 2 + [
        alone[0][0] - merged_video_tokens(8, 16, 1, CONFIG) + merged_video_tokens(frames, 16, 1, CONFIG)
        for frames in (4, 6)]
    for (length, tokens), clip in zip(alone[2:], clips[2:]):
        assert (length, tokens) == transformers_greedy(llava_dir, clip, CONFIG)[:2]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return tiny_checkpoints.qwen2_5_vl(str(tmp_path_factory.mktemp("qwen2_5_vl")))


def test_qwen2_5_vl_without_holitom_equals_transformers(qwen_dir):
    clip = tiny_checkpoints.video(8, 112)
    [(length, tokens)] = vllm_greedy(engine(qwen_dir, None), qwen_dir, [clip])
    assert (length, tokens) == transformers_greedy(qwen_dir, clip, None)[:2]


@pytest.fixture(scope="module")
def qwen_engine(qwen_dir):
    return engine(qwen_dir, QWEN, max_num_seqs=4)


def test_qwen2_5_vl_merges_like_holitom_fx_at_representative_positions(qwen_dir, qwen_engine):
    clip = tiny_checkpoints.video(8, 112)
    [(length, tokens)] = vllm_greedy(qwen_engine, qwen_dir, [clip])
    expected_length, expected, backend = transformers_greedy(qwen_dir, clip, CONFIG)
    report = backend.last_report
    assert (report.frames, report.tokens_in, report.tokens_after_outer) == (4, 64, 16)
    assert length == report.sequence_length[0] - 64 + merged_video_tokens(4, 16, 0, CONFIG) == expected_length
    assert tokens == expected


def test_qwen2_5_vl_batch_and_frame_counts_each_equal_their_single_run(qwen_dir, qwen_engine):
    clips = [tiny_checkpoints.video(8, 112, seed=1), tiny_checkpoints.video(8, 112, seed=2),
             tiny_checkpoints.video(4, 112, seed=3)]
    together = vllm_greedy(qwen_engine, qwen_dir, clips)
    alone = [vllm_greedy(qwen_engine, qwen_dir, [clip])[0] for clip in clips]
    assert together == alone
    assert alone[0][0] - alone[2][0] == merged_video_tokens(4, 16, 0, CONFIG) - merged_video_tokens(2, 16, 0, CONFIG)
    assert alone[2] == transformers_greedy(qwen_dir, clips[2], CONFIG)[:2]


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    return tiny_checkpoints.qwen3_vl(str(tmp_path_factory.mktemp("qwen3_vl")))


def test_qwen3_vl_without_holitom_equals_transformers(qwen3_dir):
    clip = tiny_checkpoints.video(8, 128)
    [(length, tokens)] = vllm_greedy(engine(qwen3_dir, None), qwen3_dir, [clip])
    assert (length, tokens) == transformers_greedy(qwen3_dir, clip, None)[:2]


@pytest.fixture(scope="module")
def qwen3_engine(qwen3_dir):
    return engine(qwen3_dir, QWEN3, max_num_seqs=4)


def test_qwen3_vl_merges_like_holitom_fx_in_each_frame_span(qwen3_dir, qwen3_engine):
    """Each merged token inside its representative's frame span (after that frame's timestamp), at its
    representative's (t, h, w), the deepstack features merged alike: the prompt's length and the greedy
    tokens equal transformers + holitom_fx."""
    clip = tiny_checkpoints.video(8, 128)
    [(length, tokens)] = vllm_greedy(qwen3_engine, qwen3_dir, [clip])
    expected_length, expected, backend = transformers_greedy(qwen3_dir, clip, CONFIG)
    report = backend.last_report
    assert (report.frames, report.tokens_in, report.tokens_after_outer) == (4, 64, 16)
    assert length == report.sequence_length[0] - 64 + merged_video_tokens(4, 16, 0, CONFIG) == expected_length
    assert tokens == expected


def test_qwen3_vl_batch_and_frame_counts_each_equal_their_single_run(qwen3_dir, qwen3_engine):
    clips = [tiny_checkpoints.video(8, 128, seed=1), tiny_checkpoints.video(8, 128, seed=2),
             tiny_checkpoints.video(4, 128, seed=3)]
    together = vllm_greedy(qwen3_engine, qwen3_dir, clips)
    alone = [vllm_greedy(qwen3_engine, qwen3_dir, [clip])[0] for clip in clips]
    assert together == alone
    assert alone[2] == transformers_greedy(qwen3_dir, clips[2], CONFIG)[:2]


def test_serving_example_answers_a_video_request_with_the_merged_prompt(llava_dir):
    """``examples/vllm_serve.py``: the OpenAI-compatible server on 127.0.0.1, one chat request with an mp4
    clip, the server stopped; the prompt it reports holds HoliTom's merged count."""
    from transformers import AutoTokenizer

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, os.path.join(root, "examples", "vllm_serve.py"), "--model", llava_dir,
                          "--timeout", "240"], capture_output=True, text=True, timeout=420)
    assert run.returncode == 0, run.stderr[-3000:]
    reported = [line for line in run.stderr.splitlines() if line.startswith("prompt tokens: ")]
    text = len(AutoTokenizer.from_pretrained(llava_dir)(prompt(llava_dir))["input_ids"]) - 1  # less <video>
    assert reported and int(reported[0].split()[2]) == text + merged_video_tokens(8, 16, 1, CONFIG)
    assert "server stopped" in run.stderr


def test_throughput_benchmark_serves_every_request_with_the_merged_prompt(tmp_path):
    """``benchmarks/vllm_throughput.py`` at a smoke size: both engines serve every request at each concurrency,
    HoliTom's prompts are the merged length, and the table's figures come with their JSON."""
    import json

    from transformers import AutoTokenizer

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "vllm_throughput.py"), "--concurrency",
                          "1", "3", "--requests", "3", "--frames", "4", "--repeats", "2", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=420)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads((tmp_path / "vllm_throughput.json").read_text())["rows"]
    assert [(r["engine"], r["concurrency"]) for r in rows] == [
        ("vanilla", 1), ("holitom", 1), ("vanilla", 3), ("holitom", 3)]
    config = HoliTomConfig(retain_ratio=0.1, tau=0.8, inner_layer="off")
    for row in rows:
        vanilla = next(r for r in rows if r["engine"] == "vanilla" and r["concurrency"] == row["concurrency"])
        assert row["requests_per_s"] > 0 and row["mean_ttft_ms"] > 0
        assert row["prompt_tokens_per_s"] == pytest.approx(row["requests_per_s"] * row["prompt_tokens"][0])
        if row["engine"] == "holitom":
            [text_and_video] = vanilla["prompt_tokens"]
            assert row["prompt_tokens"] == [text_and_video - (4 * 16 + 1) + merged_video_tokens(4, 16, 1, config)]
    assert (tmp_path / "vllm_throughput.png").stat().st_size > 10_000
    assert "req/s" in run.stdout

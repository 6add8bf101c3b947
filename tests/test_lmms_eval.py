"""lmms-eval evaluates a video model with HoliTom on and off (``holitom_fx.lmms_eval_plugin``), end to end.

Everything is written to a temporary directory, nothing comes from the hub: tiny random-weight checkpoints
(``holitom_fx.tiny_checkpoints``), four synthetic 8-frame clips (mp4) with a question each, and a task YAML
that reads them as a local JSON dataset, scored by exact match. The weights are random, so the score means
nothing: the tests check that lmms-eval computed and reported it, that every question got an answer, and
what HoliTom did to the visual tokens. lmms-eval is not in the main environment; ``.ci/run`` runs this file
in a virtualenv of its own (``.ci/lmms_eval_env``, docs/lmms_eval.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed here (.ci/run tests it in a virtualenv of "
                                         "its own: .ci/lmms_eval_env)")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub imports: the checkpoints and task are local

from lmms_eval.evaluator import simple_evaluate  # noqa: E402
from lmms_eval.models import get_model  # noqa: E402
from lmms_eval.tasks import TaskManager  # noqa: E402

from holitom_fx import tiny_checkpoints  # noqa: E402
from holitom_fx.lmms_eval_plugin.model import HoliTom, HoliTomChat, load  # noqa: E402

TASK = "holitom_tiny_video_qa"
FRAMES, SIZE = 8, 112  # LLaVA's processor resizes to 64x64: 16 tokens a frame; Qwen: 16 per pair of frames
CLIPS = 4
SETTINGS = {"retain_ratio": 0.25, "tau": 0.8}
LLAVA_ARGS = {"device": "cpu", "device_map": "cpu", "dtype": "float32", "max_frames_num": FRAMES}
QWEN_ARGS = f"device_map=cpu,max_num_frames={FRAMES},min_pixels=3136,max_pixels=12544"  # 112x112 frames
SCORE = "exact_match,none"


def write_mp4(path: str, clip, fps: int = 4) -> None:
    import av

    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        for frame in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Checkpoints, clips, questions and the task YAML (found by lmms-eval through ``--include_path``)."""
    root = tmp_path_factory.mktemp("lmms_eval")
    tiny_checkpoints.llava_onevision(str(root / "llava"))
    tiny_checkpoints.qwen2_5_vl(str(root / "qwen"))
    rows = []
    for i in range(CLIPS):
        path = str(root / f"clip{i}.mp4")
        write_mp4(path, tiny_checkpoints.video(FRAMES, SIZE, seed=i))
        rows.append({"video": path, "question": "Does the picture move left or right? Answer L or R.",
                     "answer": "LR"[i % 2]})
    (root / "questions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "task").mkdir()
    (root / "task" / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / "questions.jsonl"}
  cache_dir: {root / "datasets_cache"}
test_split: test
output_type: generate_until
doc_to_visual: video
doc_to_text: question
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 2
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")
    return root


def evaluate(lm, workdir) -> tuple[float, list[str]]:
    """(the task's score, the answer to each question) of lmms-eval's Python API on ``lm``."""
    out = simple_evaluate(model=lm, tasks=[TASK], task_manager=TaskManager(include_path=str(workdir / "task")),
                          batch_size=1, device="cpu", log_samples=True)
    answers = [sample["filtered_resps"][0] for sample in out["samples"][TASK]]
    return out["results"][TASK][SCORE], answers


def test_holitom_is_registered_in_both_forms():
    assert get_model("holitom") is HoliTomChat and get_model("holitom", force_simple=True) is HoliTom


@pytest.mark.parametrize("args, message", [
    ("base=llava_hf,retian_ratio=0.1", r"unknown key 'retian_ratio'.*did you mean 'retain_ratio'"),
    ("base=llava_hf,retain_ratio=1.5", r"HoliTomConfig.retain_ratio=1.5 is invalid"),
    ("base=llava_hf,inner_layer=0", r"HoliTomConfig.inner_layer=0 is invalid"),
    ("base=llava_hf,holitom=maybe", r"holitom='maybe'"),
    ("retain_ratio=0.1", r"needs base=NAME"),
])
def test_bad_model_args_are_refused_before_the_checkpoint_loads(args, message):
    """Through lmms-eval's own entry (``create_from_arg_string``); ``pretrained`` does not exist, so only a
    refusal before loading can raise these."""
    with pytest.raises(ValueError, match=message):
        HoliTom.create_from_arg_string(f"pretrained=/nonexistent,{args}", {"device": "cpu"})


def test_api_llava_onevision_with_holitom_on_and_off(workdir):
    """The simple form of ``llava_hf`` (frames sampled by lmms-eval), evaluated with HoliTom and without."""
    args = {**LLAVA_ARGS, "pretrained": str(workdir / "llava"), **SETTINGS}
    off = load("llava_hf", holitom=False, force_simple=True, **args)
    score, answers = evaluate(off, workdir)
    assert 0.0 <= score <= 1.0 and len(answers) == CLIPS and all(answers)
    assert off.holitom_backend is None and off.last_report is None

    on = load("llava_hf", force_simple=True, **args)
    score, answers = evaluate(on, workdir)
    assert 0.0 <= score <= 1.0 and len(answers) == CLIPS and all(answers)
    report = on.last_report
    tokens = 16 * FRAMES  # 4x4 pooled tokens a frame, then one newline token after the video
    assert report.frames == FRAMES and report.saliency.startswith("vision attention")
    assert report.tokens_in == tokens + 1
    assert report.tokens_after_outer == round(SETTINGS["retain_ratio"] * tokens) + 1
    assert report.inner_layer == 1 and report.tokens_after_inner < report.tokens_after_outer


def test_cli_qwen2_5_vl_chat_form_with_holitom(workdir):
    """``python -m lmms_eval --model holitom`` (the chat form of ``qwen2_5_vl``): the score in lmms-eval's
    results file, and HoliTom's line in its log."""
    out = workdir / "cli_out"
    model_args = f"base=qwen2_5_vl,pretrained={workdir / 'qwen'},{QWEN_ARGS},retain_ratio=0.25,tau=0.8"
    done = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "holitom", "--model_args", model_args, "--tasks", TASK,
         "--include_path", str(workdir / "task"), "--batch_size", "1", "--device", "cpu", "--output_path",
         str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HOME": str(workdir / "hf_home")})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [results] = out.glob("**/*_results.json")
    results = json.loads(results.read_text())
    assert 0.0 <= results["results"][TASK][SCORE] <= 1.0
    assert results["config"]["model"] == "holitom" and "retain_ratio=0.25" in results["config"]["model_args"]
    line = re.search(r"HoliTom, last prefill of (\d+) request\(s\): (\d+) visual tokens per row, (\d+) after the "
                     r"outer stage, (\d+) from decoder layer 1 on \((\d+) frames", done.stdout)
    assert line, done.stdout[-3000:]
    requests, before, outer, inner, groups = map(int, line.groups())
    assert (requests, groups) == (CLIPS, FRAMES // 2)  # Qwen's temporal patches: two frames each
    assert before == 16 * groups and outer == round(0.25 * before) and inner < outer

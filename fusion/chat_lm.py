"""A local causal language model (a transformers model folder) that streams chat replies.

The assistant wraps it as a LangChain chat model (`assistant.replies.llm_backends.LocalChatModel`);
this module keeps torch and transformers inside fusion and speaks plain Python:

    generator = load_text_generator("/models/qwen2.5-0.5b-instruct")
    for piece in generator.stream([("system", "..."), ("user", "hi")], max_new_tokens=64,
                                  temperature=0.2): ...

Loading is offline only (`local_files_only=True`). Generation runs in a worker thread and
hands text to the caller through transformers' TextIteratorStreamer; closing the iterator
early stops the generation at the next token.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from fusion.device import select_device

# Seconds the streamer waits for the next piece before giving up (a wedged generate()).
PIECE_TIMEOUT_S = 120.0


class _Stop(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> bool:
        return self.event.is_set()


def _plain_prompt(messages: Sequence[tuple[str, str]]) -> str:
    """For models without a chat template: role-labelled turns, then the assistant's cue."""
    lines = [f"{role.capitalize()}: {text}" for role, text in messages]
    return "\n\n".join(lines) + "\n\nAssistant:"


class LocalCausalLM:
    def __init__(self, path: Path, device: torch.device) -> None:
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        # Any: transformers' auto classes confuse type checkers about what they return.
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, dtype=dtype
        )
        self.model = model.to(device).eval()
        self._lock = threading.Lock()  # one generation at a time per loaded model

    def _inputs(self, messages: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        chat = [{"role": role, "content": text} for role, text in messages]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                chat, tokenize=False, add_generation_prompt=True
            )
        else:
            text = _plain_prompt(messages)
        encoded = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        return {k: v.to(self.device) for k, v in encoded.items()}

    def stream(
        self, messages: Sequence[tuple[str, str]], *, max_new_tokens: int, temperature: float
    ) -> Iterator[str]:
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=PIECE_TIMEOUT_S
        )
        stop = threading.Event()
        kwargs: dict[str, Any] = dict(
            **self._inputs(messages),
            max_new_tokens=max_new_tokens,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Stop(stop)]),
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature)
        else:
            kwargs.update(do_sample=False)

        failed: list[BaseException] = []

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as exc:  # handed to the caller's thread below
                failed.append(exc)
                streamer.end()  # type: ignore[no-untyped-call]

        worker = threading.Thread(target=run, name="local-llm", daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            stop.set()  # the caller stopped early (timeout, disconnect): end generation
            worker.join()
        if failed:
            raise RuntimeError("local generation failed") from failed[0]


def load_text_generator(path: str, device: str = "auto") -> LocalCausalLM:
    return LocalCausalLM(Path(path), select_device(device))

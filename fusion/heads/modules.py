"""The heads' `nn.Module`s: an ensemble of one-hidden-layer MLPs, the FiLM generator that
conditions the intent ensemble on the user's profile, the lexical branch, and the intent and
emotion models built from them.

- **Intent**: an ensemble of MLPs over the 384-d MiniLM embedding (77 Banking77 intents +
  out-of-scope), whose hidden layer is modulated (FiLM) by the 128-d profile vector. The FiLM
  generator is trained after the MLPs, with the MLPs frozen, and its modulation is exactly
  the identity when the profile is absent: a new user gets the text-only model, bit for bit.
- **Emotion**: a text expert over GoEmotions' 28 labels and a speech expert over RAVDESS's 8,
  each mapped onto the service emotions (`fusion.heads.labels`), combined as a weighted
  product of experts when both are present.

Training lives in training/heads/; serving runs the same computation folded
(`fusion.heads.serving`, `fusion.heads.graph`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from fusion.heads.labels import SERVICE_EMOTIONS
from fusion.heads.lexical import Grams

__all__ = [
    "EmotionModel",
    "EnsembleConfig",
    "EnsembleMLP",
    "FiLM",
    "FiLMConfig",
    "IntentModel",
    "LexicalBag",
    "LexiconConfig",
    "lexical_logits",
]


@dataclass(frozen=True, slots=True)
class EnsembleConfig:
    members: int = 5
    in_dim: int = 384
    hidden: int = 1024
    out_dim: int = 78
    dropout: float = 0.3
    input_dropout: float = 0.1
    # MiniLM embeddings are unit vectors (entries ~ 1/sqrt(384)); rescaling them to unit
    # variance lets the default initialisation and learning rate fit them.
    input_scale: float = math.sqrt(384)


class EnsembleMLP(nn.Module):
    """M independent one-hidden-layer MLPs as one batched matmul: [B, D] -> [M, B, C].

    Members are trained one at a time (M = 1) and stacked with `stack` for inference.
    """

    def __init__(self, config: EnsembleConfig) -> None:
        super().__init__()
        self.config = c = config
        self.w1 = nn.Parameter(torch.empty(c.members, c.in_dim, c.hidden))  # [M, D, H]
        self.b1 = nn.Parameter(torch.zeros(c.members, 1, c.hidden))  # [M, 1, H]
        self.w2 = nn.Parameter(torch.empty(c.members, c.hidden, c.out_dim))  # [M, H, C]
        self.b2 = nn.Parameter(torch.zeros(c.members, 1, c.out_dim))  # [M, 1, C]
        for w in (self.w1, self.w2):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
        self.drop_in = nn.Dropout(c.input_dropout)
        self.drop = nn.Dropout(c.dropout)
        self.act = nn.GELU()

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D] -> [M, B, H]."""
        x = self.drop_in(x * self.config.input_scale)
        h: torch.Tensor = self.act(torch.matmul(x.unsqueeze(0), self.w1) + self.b1)
        return h

    def out(self, h: torch.Tensor) -> torch.Tensor:
        """[M, B, H] -> [M, B, C]."""
        return torch.matmul(self.drop(h), self.w2) + self.b2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x))

    @classmethod
    def stack(cls, members: Sequence[EnsembleMLP]) -> EnsembleMLP:
        total = sum(m.config.members for m in members)
        config = EnsembleConfig(**{**asdict(members[0].config), "members": total})
        out = cls(config)
        with torch.no_grad():
            for name in ("w1", "b1", "w2", "b2"):
                getattr(out, name).copy_(torch.cat([getattr(m, name) for m in members]))
        return out


@dataclass(frozen=True, slots=True)
class FiLMConfig:
    profile_dim: int = 128
    hidden: int = 128
    target: int = 1024  # the MLP's hidden width
    dropout: float = 0.1
    # Also add a profile-dependent bias to the output logits (0: no bias): behaviour evidence
    # for one intent then needs no detour through the hidden units.
    classes: int = 0


class FiLM(nn.Module):
    """Profile [B, P] and presence [B] -> (gamma, beta) [B, H] and a logit bias [B, C];
    (1, 0, 0) where absent.

    The last layer starts at zero, so training starts from the unconditioned model.
    """

    def __init__(self, config: FiLMConfig) -> None:
        super().__init__()
        self.config = c = config
        self.net = nn.Sequential(
            nn.Linear(c.profile_dim, c.hidden),
            nn.GELU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.hidden, 2 * c.target + c.classes),
        )
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(
        self, profile: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        on = present.to(profile.dtype).unsqueeze(-1)  # [B, 1]
        out = self.net(profile * on)  # [B, 2H + C]
        h = self.config.target
        d_gamma, beta, bias = out[:, :h], out[:, h : 2 * h], out[:, 2 * h :]
        return 1.0 + on * d_gamma, on * beta, on * bias


@dataclass(frozen=True, slots=True)
class LexiconConfig:
    buckets: int = 0  # hashed unigram + bigram buckets; 0: no lexical branch
    members: int = 1
    out_dim: int = 28


class LexicalBag(nn.Module):
    """`Grams` of B messages -> logits [M, B, C] added to the text ensemble's: per member, a
    linear model over the message's hashed grams. Starts at zero."""

    def __init__(self, config: LexiconConfig) -> None:
        super().__init__()
        self.config = c = config
        self.table = nn.Parameter(torch.zeros(max(c.buckets, 1), c.members * c.out_dim))

    def forward(self, grams: Grams) -> torch.Tensor:
        return lexical_logits(self.table, grams, self.config.members)

    @classmethod
    def stack(cls, members: Sequence[LexicalBag]) -> LexicalBag:
        total = sum(m.config.members for m in members)
        out = cls(replace(members[0].config, members=total))
        with torch.no_grad():
            out.table.copy_(torch.cat([m.table for m in members], dim=1))
        return out


def lexical_logits(table: torch.Tensor, grams: Grams, members: int) -> torch.Tensor:
    """`LexicalBag`'s output [M, B, C] from its table [buckets, M*C]: one fused op."""
    ids, offsets, weights = grams
    out = torch.nn.functional.embedding_bag(
        ids, table, offsets, mode="sum", per_sample_weights=weights
    )  # [B, M*C]
    return out.view(out.shape[0], members, -1).transpose(0, 1)


class IntentModel(nn.Module):
    """Text [B, 384], profile [B, 128], presence [B] (+ the messages' hashed grams) -> logits
    [M, B, 78]. The lexical branch, as the emotion head's, adds a linear model over the
    message's grams to each member's logits; it is skipped when no grams are given."""

    def __init__(
        self, trunk: EnsembleConfig, film: FiLMConfig, lexicon: LexiconConfig | None = None
    ) -> None:
        super().__init__()
        self.trunk = EnsembleMLP(trunk)
        self.film = FiLM(film)
        self.lexicon = LexicalBag(lexicon or LexiconConfig(0, trunk.members, trunk.out_dim))

    def forward(
        self,
        text: torch.Tensor,
        profile: torch.Tensor,
        present: torch.Tensor,
        lexical: Grams | None = None,
    ) -> torch.Tensor:
        h = self.trunk.hidden(text)  # [M, B, H]
        gamma, beta, bias = self.film(profile, present)  # [B, H], [B, H], [B, C or 0]
        logits = self.trunk.out(h * gamma + beta)  # [M, B, C]
        if lexical is not None and self.lexicon.config.buckets:
            logits = logits + self.lexicon(lexical)
        return logits + bias if bias.shape[-1] else logits


class EmotionModel(nn.Module):
    """Text [B, 384] (+ the message's hashed grams) and speech [B, S] -> calibrated
    service-emotion log-probabilities [B, 7].

    Each expert's member-averaged, temperature-scaled distribution over its own labels is
    summed into the service emotions; with both present, `w_text * log p_text + w_speech *
    log p_speech + bias`, renormalised (a weighted product of experts). The text expert's
    logits are the embedding MLP's plus, when the raw text is given, the lexical branch's.
    """

    def __init__(
        self, text: EnsembleConfig, speech: EnsembleConfig, lexicon: LexiconConfig | None = None
    ) -> None:
        super().__init__()
        self.text = EnsembleMLP(text)
        self.speech = EnsembleMLP(speech)
        self.lexicon = LexicalBag(lexicon or LexiconConfig(0, text.members, text.out_dim))
        n = len(SERVICE_EMOTIONS)
        self.register_buffer("text_map", torch.zeros(text.out_dim, n))  # [28, 7]
        self.register_buffer("speech_map", torch.zeros(speech.out_dim, n))  # [8, 7]
        # temperatures (text, speech); fusion weights (text, speech); fusion bias [7];
        # decision offsets [7] added to text-only log-probabilities before the argmax.
        self.register_buffer("temperature", torch.ones(2))
        self.register_buffer("fusion_weight", torch.ones(2))
        self.register_buffer("fusion_bias", torch.zeros(n))
        self.register_buffer("text_offsets", torch.zeros(n))
        # Standardisation of the speech features, from the training clips.
        self.register_buffer("speech_mean", torch.zeros(speech.in_dim))
        self.register_buffer("speech_std", torch.ones(speech.in_dim))

    def _expert(self, mlp: EnsembleMLP, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.softmax(mlp(x) / t, dim=-1).mean(dim=0)  # [B, C]

    def text_probs(self, text: torch.Tensor, lexical: Grams | None = None) -> torch.Tensor:
        """[B, 384] and optionally `lexical_batch` of the texts -> [B, 28] calibrated
        GoEmotions probabilities."""
        logits = self.text(text)  # [M, B, 28]
        if lexical is not None and self.lexicon.config.buckets:
            logits = logits + self.lexicon(lexical)
        return torch.softmax(logits / self.get_buffer("temperature")[0], dim=-1).mean(dim=0)

    def speech_probs(self, speech: torch.Tensor) -> torch.Tensor:
        """[B, S] raw speech features -> [B, 8] calibrated RAVDESS probabilities."""
        z = (speech - self.get_buffer("speech_mean")) / self.get_buffer("speech_std")
        return self._expert(self.speech, z, self.get_buffer("temperature")[1])

    def fuse(self, log_text: torch.Tensor, log_speech: torch.Tensor) -> torch.Tensor:
        """Service log-probabilities [B, 7] of both experts -> fused [B, 7]."""
        w = self.get_buffer("fusion_weight")
        logits = w[0] * log_text + w[1] * log_speech + self.get_buffer("fusion_bias")
        return torch.log_softmax(logits, dim=-1)

    def forward(
        self,
        text: torch.Tensor,
        speech: torch.Tensor,
        has_speech: torch.Tensor,
        lexical: Grams | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (log-probabilities [B, 7], decision scores [B, 7])."""
        p_text = self.text_probs(text, lexical)
        log_text = (p_text @ self.get_buffer("text_map")).clamp_min(1e-6).log()
        decision = log_text + self.get_buffer("text_offsets")
        if not bool(has_speech.any()):
            return log_text, decision
        log_speech = (self.speech_probs(speech) @ self.get_buffer("speech_map")).clamp_min(1e-6)
        fused = self.fuse(log_text, log_speech.log())
        on = has_speech.unsqueeze(-1)
        return torch.where(on, fused, log_text), torch.where(on, fused, decision)

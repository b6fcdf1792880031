"""Intent and emotion heads over the text embedding, the user's profile and speech features.

    understanding = Understanding.load(device)      # fusion/weights/intent.pt + emotion.pt
    results = understanding.predict_many(text_vecs, profile_vecs, speech_vecs)

- **Intent**: an ensemble of one-hidden-layer MLPs over the 384-d MiniLM embedding (77
  Banking77 intents + out-of-scope), whose hidden layer is modulated (FiLM) by the 128-d
  profile vector. The FiLM generator is trained after the MLPs, with the MLPs frozen, and
  its modulation is exactly the identity when the profile is absent: a new user gets the
  text-only model, bit for bit.
- **Emotion**: a text head over GoEmotions' 28 labels and a speech head over RAVDESS's 8,
  each mapped onto the service emotions (`SERVICE_EMOTIONS`, mappings below), combined as a
  weighted product of experts when both are present.
- Confidences are temperature-scaled on validation data (docs/understanding.md).

The model, its training (`fusion.training.heads`) and this inference wrapper are kept
apart; nothing here reads data sets.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fusion.vectors import stack_rows

if TYPE_CHECKING:
    from fusion.heads_graph import GraphHeads

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
INTENT_WEIGHTS = WEIGHTS_DIR / "intent.pt"
EMOTION_WEIGHTS = WEIGHTS_DIR / "emotion.pt"
FUSION_WEIGHTS = WEIGHTS_DIR / "fusion.pt"
WEIGHTS_FORMAT = 1
OUT_OF_SCOPE = "out_of_scope"
Vector = npt.NDArray[np.float32]

SERVICE_EMOTIONS: tuple[str, ...] = (
    "neutral",
    "satisfied",
    "confused",
    "anxious",
    "sad",
    "frustrated",
    "angry",
)

# GoEmotions' 28 labels -> service emotions. Positive labels all read as a customer who is
# content; curiosity and realization are the neutral information-seeking of a service chat;
# disappointment and disapproval are aimed at an outcome (frustrated), anger and disgust at
# the company (angry); embarrassment and remorse are the sad, self-directed ones.
GOEMOTIONS_TO_SERVICE: dict[str, str] = {
    "admiration": "satisfied",
    "amusement": "satisfied",
    "anger": "angry",
    "annoyance": "frustrated",
    "approval": "satisfied",
    "caring": "satisfied",
    "confusion": "confused",
    "curiosity": "neutral",
    "desire": "neutral",
    "disappointment": "frustrated",
    "disapproval": "frustrated",
    "disgust": "angry",
    "embarrassment": "sad",
    "excitement": "satisfied",
    "fear": "anxious",
    "gratitude": "satisfied",
    "grief": "sad",
    "joy": "satisfied",
    "love": "satisfied",
    "nervousness": "anxious",
    "optimism": "satisfied",
    "pride": "satisfied",
    "realization": "neutral",
    "relief": "satisfied",
    "remorse": "sad",
    "sadness": "sad",
    "surprise": "confused",
    "neutral": "neutral",
}

# GoEmotions' own Ekman grouping (the data set's ekman/ files), used for the Ekman-7 figures.
GOEMOTIONS_TO_EKMAN: dict[str, str] = {
    "admiration": "joy",
    "amusement": "joy",
    "anger": "anger",
    "annoyance": "anger",
    "approval": "joy",
    "caring": "joy",
    "confusion": "surprise",
    "curiosity": "surprise",
    "desire": "joy",
    "disappointment": "sadness",
    "disapproval": "anger",
    "disgust": "disgust",
    "embarrassment": "sadness",
    "excitement": "joy",
    "fear": "fear",
    "gratitude": "joy",
    "grief": "sadness",
    "joy": "joy",
    "love": "joy",
    "nervousness": "fear",
    "optimism": "joy",
    "pride": "joy",
    "realization": "surprise",
    "relief": "joy",
    "remorse": "sadness",
    "sadness": "sadness",
    "surprise": "surprise",
    "neutral": "neutral",
}
EKMAN: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")

# RAVDESS's emotion codes 01..08 in code order (as `fusion.speech.EMOTIONS`).
RAVDESS: tuple[str, ...] = (
    "neutral",
    "calm",
    "happy",
    "sad",
    "angry",
    "fearful",
    "disgust",
    "surprised",
)

# RAVDESS's 8 acted emotions -> service emotions. Calm is a quiet neutral; disgust in these
# recordings is contempt more than rage, the tone of a customer fed up with an outcome; the
# rising, questioning "surprised" delivery is the closest to a caller who does not follow.
RAVDESS_TO_SERVICE: dict[str, str] = {
    "neutral": "neutral",
    "calm": "neutral",
    "happy": "satisfied",
    "sad": "sad",
    "angry": "angry",
    "fearful": "anxious",
    "disgust": "frustrated",
    "surprised": "confused",
}


def mapping_matrix(
    source: Sequence[str], target: Sequence[str], mapping: Mapping[str, str]
) -> Vector:
    """[len(source), len(target)] 0/1 matrix: p_target = p_source @ M."""
    out = np.zeros((len(source), len(target)), dtype=np.float32)
    for i, name in enumerate(source):
        out[i, target.index(mapping[name])] = 1.0
    return out


# ---------------------------------------------------------------------------- modules


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


# ---------------------------------------------------------------------------- calibration


def expected_calibration_error(
    probs: npt.NDArray[np.floating[Any]], labels: npt.NDArray[np.integer[Any]], bins: int = 15
) -> float:
    """ECE of the top-1 confidence over equal-width bins (Guo et al. 2017)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += float(inside.mean()) * abs(float(correct[inside].mean() - conf[inside].mean()))
    return total


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> float:
    """The temperature minimising the NLL of `logits` [N, C] (or [M, N, C]: member average)."""
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        probs = torch.softmax(logits / log_t.exp(), dim=-1)
        if probs.dim() == 3:
            probs = probs.mean(dim=0)
        loss = torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels)
        loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call, unused-ignore]
    return float(log_t.detach().exp())


# ---------------------------------------------------------------------------- checkpoints


def _half(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().half() if v.is_floating_point() else v for k, v in state.items()}


def _float(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def shipped_precision(model: nn.Module) -> None:
    """Round a model's floating tensors to float16 and back, as its checkpoint will hold them."""
    model.load_state_dict(_float(_half(model.state_dict())))


def save_blob(path: Path, blob: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": WEIGHTS_FORMAT, **blob}, tmp)
    tmp.replace(path)


def _load_blob(path: Path) -> dict[str, Any]:
    blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path}: unsupported weights format {blob.get('format')}")
    return blob


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True, slots=True)
class IntentArtifact:
    model: IntentModel
    intents: tuple[str, ...]  # 77 Banking77 intents then OUT_OF_SCOPE
    temperature: float
    # Below this calibrated probability of the best in-scope intent, the turn is out of scope.
    oos_threshold: float
    # sha256 of the fusion weights whose profile space the FiLM generator learned; None: any.
    profile_space: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


def save_intent(path: Path, art: IntentArtifact) -> None:
    save_blob(
        path,
        {
            "trunk": asdict(art.model.trunk.config),
            "film": asdict(art.model.film.config),
            "lexicon": asdict(art.model.lexicon.config),
            "state_dict": _half(art.model.state_dict()),
            "intents": list(art.intents),
            "temperature": art.temperature,
            "oos_threshold": art.oos_threshold,
            "profile_space": art.profile_space,
            "metadata": art.metadata,
        },
    )


def load_intent(path: Path = INTENT_WEIGHTS) -> IntentArtifact:
    blob = _load_blob(path)
    trunk = EnsembleConfig(**blob["trunk"])
    empty = {"members": trunk.members, "out_dim": trunk.out_dim}
    model = IntentModel(
        trunk, FiLMConfig(**blob["film"]), LexiconConfig(**blob.get("lexicon", empty))
    )
    state = _float(blob["state_dict"])
    # Checkpoints from before the lexical branch: an empty (all-zero) branch.
    state.setdefault("lexicon.table", model.lexicon.table.detach().clone())
    model.load_state_dict(state)
    return IntentArtifact(
        model.eval(),
        tuple(blob["intents"]),
        float(blob["temperature"]),
        float(blob["oos_threshold"]),
        blob.get("profile_space"),
        dict(blob.get("metadata", {})),
    )


# Words, and every other character (emoji, punctuation) as a token of its own.
_TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")
# "sooooo" and "sooo" are one cue: runs of three or more of a character shrink to two.
_RUN = re.compile(r"(.)\1{2,}")


# Hash values of the start and end marks and of shouting; an odd multiplier mixes a bigram's
# two token hashes so that "not bad" and "bad not" differ.
_START, _END, _SHOUT, _MIX = 1, 2, 3, 0x9E3779B1


def lexical_tokens(text: str) -> tuple[list[str], bool]:
    """A message's lower-cased tokens and whether a word is shouted (all capitals).

    GoEmotions labels hinge on words such as thanks, sorry, lol or wtf, and on emoji and
    "!!!", which a sentence embedding trained for similarity blurs.
    """
    shouted = any(len(w) > 2 and w.isalpha() and w.isupper() for w in text.split())
    return _TOKEN.findall(_RUN.sub(r"\1\1", text.replace("\u2019", "'").lower())), shouted


def lexical_hashes(text: str) -> list[int]:
    """Hashes of a message's tokens, its token bigrams (with start and end marks) and
    shouting, before they are reduced to buckets: heads with lexical branches hash a message
    once. crc32 because it is stable across processes, unlike hash(); bigrams mix their
    tokens' hashes instead of hashing a joined string (half the cost)."""
    tokens, shouted = lexical_tokens(text)
    hashes = [zlib.crc32(t.encode("utf-8")) for t in tokens]
    grams = hashes + [(a * _MIX) ^ b for a, b in itertools.pairwise([_START, *hashes, _END])]
    if shouted:
        grams.append(_SHOUT)
    return grams


def lexical_ids(text: str, buckets: int) -> list[int]:
    """Distinct bucket ids of `lexical_hashes`."""
    return list({h % buckets for h in lexical_hashes(text)})


# A batch's grams for `torch.nn.functional.embedding_bag`: ids [K], each message's first
# position [B] and per-gram weights [K].
Grams = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def lexical_pack(rows: Sequence[Sequence[int]]) -> Grams:
    """`lexical_ids` rows -> `Grams`, each message's grams weighted 1/sqrt(count) so a long
    comment's many cues do not outvote the embedding. Flat, not padded: Reddit comment
    lengths are long-tailed, so a padded block would be mostly padding."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=lengths.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
    weights = np.repeat(1.0 / np.sqrt(np.maximum(lengths, 1)), lengths).astype(np.float32)
    return torch.from_numpy(ids), torch.from_numpy(offsets), torch.from_numpy(weights)


def lexical_batch(texts: Sequence[str], buckets: int) -> Grams:
    return lexical_pack([lexical_ids(t, buckets) for t in texts])


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


def save_emotion(path: Path, model: EmotionModel, metadata: Mapping[str, Any]) -> None:
    save_blob(
        path,
        {
            "text": asdict(model.text.config),
            "speech": asdict(model.speech.config),
            "lexicon": asdict(model.lexicon.config),
            "state_dict": _half(model.state_dict()),
            "emotions": list(SERVICE_EMOTIONS),
            "metadata": dict(metadata),
        },
    )


def load_emotion(path: Path = EMOTION_WEIGHTS) -> tuple[EmotionModel, dict[str, Any]]:
    blob = _load_blob(path)
    if tuple(blob["emotions"]) != SERVICE_EMOTIONS:
        raise ValueError(f"{path}: emotions {blob['emotions']} differ from {SERVICE_EMOTIONS}")
    text = EnsembleConfig(**blob["text"])
    lexicon = LexiconConfig(**blob.get("lexicon", {"members": text.members}))
    model = EmotionModel(text, EnsembleConfig(**blob["speech"]), lexicon)
    state = _float(blob["state_dict"])
    # Checkpoints from before the lexical branch: an empty (all-zero) branch.
    state.setdefault("lexicon.table", model.lexicon.table.detach().clone())
    # Buffers that set the decision are kept in full precision (fp16 rounding of a
    # temperature or offset would move outputs for no size gain).
    model.load_state_dict(state)
    return model.eval(), dict(blob.get("metadata", {}))


# ---------------------------------------------------------------------------- serving path


class _Gemm:
    """x [B, in] -> x @ weight.T + bias [B, out], the weight stored [in, out] (float32)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, device: torch.device) -> None:
        w = weight.detach().float()  # [out, in]
        self.weight_t = w.t().contiguous().to(device)
        self.bias = bias.detach().float().contiguous().to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight_t)


def _first_layer(mlp: EnsembleMLP) -> torch.Tensor:
    """[M, D, H] -> [M*H, D], member-major like `EnsembleMLP.hidden`'s output."""
    c = mlp.config
    return mlp.w1.detach().permute(0, 2, 1).reshape(c.members * c.hidden, c.in_dim)


def _tensor(array: npt.NDArray[Any], device: torch.device) -> torch.Tensor:
    """A numpy array as a tensor on `device`; on a CPU, the same memory, with no `.to` call."""
    out = torch.from_numpy(array)
    return out if device.type == "cpu" else out.to(device)


def _stacked_map(mapping: torch.Tensor, members: int) -> torch.Tensor:
    """[C, E] label mapping -> [M*C, E] taking members' probabilities side by side [B, M*C] to
    the member average's mapped probabilities: the average and the mapping in one matmul."""
    return mapping.repeat(members, 1) / members


class ServingHeads:
    """What `IntentModel` (with its temperature) and `EmotionModel` compute, in about a third
    of the operations: every first layer that reads the text vector (intent and emotion
    members alike) is one GEMM, constants are folded in at load time, and no module is
    called. It serves on a GPU; on a CPU, `fusion.heads_graph.GraphHeads` runs the same
    folded constants as ONNX Runtime graphs. Tests hold both to the modules.
    """

    def __init__(
        self,
        intent: IntentModel,
        temperature: float,
        emotion: EmotionModel | None,
        device: torch.device,
    ) -> None:
        trunk, film = intent.trunk, intent.film
        mlps = [trunk] if emotion is None else [trunk, emotion.text]
        if any(m.config.in_dim != trunk.config.in_dim for m in mlps):
            raise ValueError("the intent and emotion text heads read different embeddings")
        # The embedding is scaled once, as the modules scale it, and the biases ride in the GEMM:
        # one pass over the hidden units fewer. A head with another input scale gets the ratio
        # folded into its weights, which leaves the stored float16 weights as they are when the
        # scales agree, as the shipped heads' do.
        self.input_scale = trunk.config.input_scale
        ratios = [m.config.input_scale / self.input_scale for m in mlps]
        self.first = _Gemm(
            torch.cat([_first_layer(m) * r for m, r in zip(mlps, ratios, strict=True)]),
            torch.cat([m.b1.detach().reshape(-1) for m in mlps]),
            device,
        )
        self.split = trunk.config.members * trunk.config.hidden
        self.intent_shape = (trunk.config.members, trunk.config.hidden)
        self.device = device
        # Temperatures folded into the last layers (logits / T in one matmul), and into the
        # last biases, which `lexical_logits` returns with the lexical cues. The intent's
        # last layer is stored [M, C, H] and its logits computed [M, C, B].
        self.intent_w2 = (trunk.w2.detach() / temperature).transpose(1, 2).contiguous()
        biases = [trunk.b2.detach().reshape(-1) / temperature]
        bags = [(intent.lexicon, 1.0 / temperature)]
        linears = [m for m in film.net if isinstance(m, nn.Linear)]
        width = film.config.target
        # gamma = 1 + generator output: the 1 goes into the last bias. A row without a
        # profile takes `film_identity` (gamma 1, beta 0, no logit bias) instead. The logit
        # bias is divided by the temperature after the GEMM: folded into the weights, the
        # quotient would be rounded to float16 in the packed copy.
        last_bias = linears[1].bias.detach().clone()
        last_bias[:width] += 1.0
        self.temperature = temperature
        self.film1 = _Gemm(linears[0].weight, linears[0].bias, device)
        self.film2 = _Gemm(linears[1].weight, last_bias, device)
        self.film_identity = torch.zeros_like(last_bias)
        self.film_identity[:width] = 1.0
        self.film_width = width
        self.emotion = emotion
        if emotion is not None:
            t_text, t_speech = emotion.get_buffer("temperature").tolist()
            text = emotion.text.config
            self.emotion_shape = (text.members, text.hidden)
            self.emotion_w2 = emotion.text.w2.detach() / t_text
            biases.append(emotion.text.b2.detach().reshape(-1) / t_text)
            bags.append((emotion.lexicon, 1.0 / t_text))
            self.text_map = _stacked_map(emotion.get_buffer("text_map"), text.members)
            self.text_offsets = emotion.get_buffer("text_offsets")
            # The speech features' standardisation folded into the speech first layer.
            sc = emotion.speech.config
            std = emotion.get_buffer("speech_std")
            w = _first_layer(emotion.speech) * (sc.input_scale / std)  # [M*H, S]
            b = emotion.speech.b1.detach().reshape(-1) - w @ emotion.get_buffer("speech_mean")
            self.speech_first = _Gemm(w, b, device)
            self.speech_shape = (sc.members, sc.hidden)
            self.speech_w2 = emotion.speech.w2.detach() / t_speech
            self.speech_b2 = emotion.speech.b2.detach() / t_speech
            self.speech_map = _stacked_map(emotion.get_buffer("speech_map"), sc.members)
            self.fusion_weight = [float(w) for w in emotion.get_buffer("fusion_weight")]
            self.fusion_bias = emotion.get_buffer("fusion_bias")
        # Both heads' last biases side by side, [M*C] each, and their lexical tables as float32
        # rows [buckets, M*C] scaled like the logits, in one table when the heads hash into
        # the same buckets, so that a message's rows are gathered and summed once for both (a
        # wider row costs next to nothing: numpy's per-call overhead dominates).
        self.bias_row = torch.cat(biases).cpu().numpy()
        self.intent_width = biases[0].shape[0]
        self.lexicon_tables: list[tuple[int, int, Vector]] = []  # (buckets, first column, rows)
        column = 0
        for (bag, scale), bias in zip(bags, biases, strict=True):
            if bag.config.buckets:
                table = (bag.table.detach().float().cpu() * scale).numpy()
                last = self.lexicon_tables[-1] if self.lexicon_tables else None
                if last is not None and last[0] == bag.config.buckets:
                    self.lexicon_tables[-1] = (last[0], last[1], np.hstack([last[2], table]))
                else:
                    self.lexicon_tables.append((bag.config.buckets, column, table))
            column += bias.shape[0]
        self.biases = self._members(self.bias_row[None, :])

    def hidden(self, text: torch.Tensor) -> torch.Tensor:
        """[B, D] -> [B, every first layer's units]."""
        return torch.nn.functional.gelu(self.first(text * self.input_scale))

    def intent_probs(
        self,
        hidden: torch.Tensor,
        profile: torch.Tensor | None,
        present: torch.Tensor | None,
        lexical: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, 78] calibrated probabilities, the member average. `profile` [B, P] or None
        when no row has one; `present` [B] marks the rows that do, or None when all do (the
        caller knows these from its inputs, which saves reading them back from tensors);
        `lexical`: the intent part of `lexical_logits`, or None without the texts."""
        h = hidden[:, : self.split].view(-1, *self.intent_shape).permute(1, 2, 0)  # [M, H, B]
        start = (self.biases[0] if lexical is None else lexical).transpose(1, 2)
        logit_bias = None
        if profile is not None:
            g = self.film2(torch.nn.functional.gelu(self.film1(profile))).t()  # [2H + C, B]
            if present is not None:
                g = torch.where(present, g, self.film_identity.unsqueeze(-1))
            w = self.film_width
            h = torch.addcmul(g[w : 2 * w], h, g[:w])
            if g.shape[0] > 2 * w:
                logit_bias = g[2 * w :]
        logits = torch.baddbmm(start, self.intent_w2, h)  # [M, C, B]
        if logit_bias is not None:
            logits = logits + logit_bias / self.temperature
        return torch.softmax(logits, dim=1).mean(dim=0).t()

    def lexical_logits(
        self, texts: Sequence[str] | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What each head's `LexicalBag` adds to its members' logits, [M, B, C], with the
        last layer's bias already added, so that neither head adds it again (both scaled by
        the temperature, as the logits are). A head without a lexical branch, or any head
        without `texts`, gets the bias alone (B = 1, broadcast); the emotion part is None
        without an emotion head. A handful of table rows per message, summed in numpy:
        torch's per-operation overhead would be most of the cost."""
        if texts is None or not self.lexicon_tables:
            return self.biases
        # Columns without a lexical branch keep their zeros; the numpy calls are the leanest
        # (`take` and `add.reduce` skip `__getitem__`'s and `sum`'s Python-level dispatch).
        out = np.zeros((len(texts), self.bias_row.shape[0]), dtype=np.float32)
        for i, text in enumerate(texts):
            hashes = lexical_hashes(text)
            for buckets, column, table in self.lexicon_tables:
                ids = list({h % buckets for h in hashes})
                np.multiply(
                    np.add.reduce(table.take(ids, axis=0), axis=0),
                    1.0 / math.sqrt(max(len(ids), 1)),
                    out=out[i, column : column + table.shape[1]],
                )
        out += self.bias_row
        return self._members(out)

    def _members(self, rows: Vector) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, both heads' M*C] -> ([M, B, C] of the intent, of the emotion or None)."""
        split = self.intent_width
        intent = _tensor(rows[:, :split].reshape(len(rows), self.intent_shape[0], -1), self.device)
        if self.emotion is None:
            return intent.transpose(0, 1), None
        emotion = _tensor(
            rows[:, split:].reshape(len(rows), self.emotion_shape[0], -1), self.device
        )
        return intent.transpose(0, 1), emotion.transpose(0, 1)

    def _expert(
        self, h: torch.Tensor, start: torch.Tensor, w2: torch.Tensor, mapping: torch.Tensor
    ) -> torch.Tensor:
        """Members' hidden units [B, M, H] -> mapped member-averaged probabilities [B, E],
        floored at 1e-6 as the module's are before their log."""
        logits = torch.baddbmm(start, h.transpose(0, 1), w2)  # [M, B, C]
        probs = torch.softmax(logits, dim=-1).transpose(0, 1)  # [B, M, C]
        return (probs.reshape(probs.shape[0], -1) @ mapping).clamp_min(1e-6)

    def emotion_probs(
        self,
        hidden: torch.Tensor,
        speech: torch.Tensor | None,
        has_speech: torch.Tensor | None,
        lexical: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As `EmotionModel.forward`, (probabilities [B, 7], decision scores [B, 7]): the
        exponent of its log-probabilities (renormalised, as the results are) and its decision
        scores up to a constant per row, which leaves their argmax. `speech` [B, S] or None
        when no row has any; `has_speech` [B] marks the rows that do, or None when all do.
        `lexical`: the emotion part of `lexical_logits`, or None without the texts."""
        if self.emotion is None:
            raise ValueError("built without an emotion model")
        h = hidden[:, self.split :].view(-1, *self.emotion_shape)
        start = self.biases[1] if lexical is None else lexical
        assert start is not None
        text = self._expert(h, start, self.emotion_w2, self.text_map)  # [B, 7]
        log_text = text.log()
        if speech is None:
            return text / text.sum(dim=1, keepdim=True), log_text + self.text_offsets
        hs = torch.nn.functional.gelu(self.speech_first(speech)).view(-1, *self.speech_shape)
        log_speech = self._expert(hs, self.speech_b2, self.speech_w2, self.speech_map).log()
        w_text, w_speech = self.fusion_weight
        fused = w_text * log_text + (w_speech * log_speech + self.fusion_bias)
        probs = torch.softmax(fused, dim=-1)
        if has_speech is None:
            return probs, fused
        on = has_speech.unsqueeze(-1)
        return (
            torch.where(on, probs, text / text.sum(dim=1, keepdim=True)),
            torch.where(on, fused, log_text + self.text_offsets),
        )


# ---------------------------------------------------------------------------- inference


@dataclass(frozen=True, slots=True)
class HeadOutputs:
    intent: Vector  # [B, 78] calibrated probabilities, the member average
    emotion: Vector | None  # [B, 7] calibrated probabilities; None without an emotion head
    decision: Vector | None  # [B, 7] decision scores (argmax = the label)


@dataclass(frozen=True, slots=True)
class UnderstandingResult:
    intent: str  # a Banking77 intent or OUT_OF_SCOPE
    intent_confidence: float  # calibrated probability of `intent`
    top2: tuple[tuple[str, float], ...]  # the two likeliest in-scope intents
    emotion: str  # one of SERVICE_EMOTIONS
    emotion_scores: dict[str, float]  # calibrated, sums to 1

    @property
    def out_of_scope(self) -> bool:
        return self.intent == OUT_OF_SCOPE


class Understanding:
    """Both heads in eval mode on one device; thread-compatible (no state per call).

    On a CPU the heads run as ONNX Runtime graphs (`fusion.heads_graph`) unless `graph` is
    off, the intent's largest layers in 8 bits unless `quantize` is off; elsewhere, or
    without `graph`, through `ServingHeads`."""

    def __init__(
        self,
        intent: IntentArtifact,
        emotion: EmotionModel,
        device: torch.device,
        profile_space: str | None = None,
        *,
        graph: bool = True,
        quantize: bool = True,
    ) -> None:
        self.device = device
        self.intent_model = intent.model.to(device).eval()
        self.emotion_model = emotion.to(device).eval()
        serving = ServingHeads(self.intent_model, intent.temperature, self.emotion_model, device)
        self.graph: GraphHeads | None = None
        self.serving: ServingHeads | None = serving
        if graph and device.type == "cpu":
            # Imported here: onnx and ONNX Runtime load only where they serve.
            from fusion.heads_graph import GraphHeads

            self.graph = GraphHeads(serving, quantize=quantize)
            self.serving = None  # its constants live on in the graphs
        self.intents = intent.intents
        self.temperature = intent.temperature
        self.oos_threshold = intent.oos_threshold
        # A profile from another fusion model lives in another space: ignore it (the
        # unconditioned path) rather than feed the FiLM generator vectors it never saw.
        self.use_profile = (
            intent.profile_space is None
            or profile_space is None
            or profile_space == intent.profile_space
        )
        self.profile_dim = intent.model.film.config.profile_dim
        self.speech_dim = emotion.speech.config.in_dim

    @classmethod
    def load(
        cls,
        device: torch.device | None = None,
        intent_path: Path = INTENT_WEIGHTS,
        emotion_path: Path = EMOTION_WEIGHTS,
        fusion_path: Path | None = FUSION_WEIGHTS,
    ) -> Understanding:
        """Shipped weights, offline. `fusion_path`: the fusion weights whose profile vectors
        the server will pass (checked against the space the intent head learned)."""
        space = (
            file_sha256(fusion_path) if fusion_path is not None and fusion_path.exists() else None
        )
        emotion, _ = load_emotion(emotion_path)
        return cls(load_intent(intent_path), emotion, device or torch.device("cpu"), space)

    def _rows(
        self, vecs: Sequence[Vector | None] | None, n: int, dim: int, name: str
    ) -> tuple[Vector | None, npt.NDArray[np.bool_] | None]:
        """The messages' vectors [n, dim] (zeros where a message has none) and which messages
        have one [n]: (None, None) when none does, presence None when all do."""
        if vecs is None:
            return None, None
        if len(vecs) != n:
            raise ValueError(f"{len(vecs)} {name} vectors for {n} messages")
        if n == 1 and vecs[0] is not None:  # a lone message, the server's common case
            return stack_rows(vecs, dim, name), None
        present = [v is not None for v in vecs]
        count = sum(present)
        if not count:
            return None, None
        out = stack_rows(vecs, dim, name)
        return out, (None if count == n else np.array(present))

    def outputs(
        self,
        text: Vector,
        profile: Vector | None,
        has_profile: npt.NDArray[np.bool_] | None,
        speech: Vector | None,
        has_speech: npt.NDArray[np.bool_] | None,
        texts: Sequence[str] | None,
    ) -> HeadOutputs:
        """Both heads on this device's path. `text` [B, D]; `profile` [B, P] or None when no
        row has one, `has_profile` [B] or None when every row does; the same for `speech`."""
        if not self.use_profile:
            profile = has_profile = None
        if self.graph is not None:
            return self.graph.run(text, profile, has_profile, speech, has_speech, texts)
        assert self.serving is not None
        serving = self.serving
        if texts is not None and len(texts) != text.shape[0]:
            raise ValueError(f"{len(texts)} texts for {text.shape[0]} messages")

        def tensor(a: npt.NDArray[Any] | None) -> torch.Tensor | None:
            return None if a is None else _tensor(a, self.device)

        with torch.inference_mode():
            hidden = serving.hidden(_tensor(text, self.device))
            intent_lexical, emotion_lexical = serving.lexical_logits(texts)
            probs = serving.intent_probs(
                hidden, tensor(profile), tensor(has_profile), intent_lexical
            )
            scores, decision = serving.emotion_probs(
                hidden, tensor(speech), tensor(has_speech), emotion_lexical
            )
            return HeadOutputs(probs.cpu().numpy(), scores.cpu().numpy(), decision.cpu().numpy())

    def intent_probs(
        self,
        text: Vector,
        profile: Vector | None = None,
        present: npt.NDArray[np.bool_] | None = None,
        texts: Sequence[str] | None = None,
    ) -> Vector:
        """[B, 78] calibrated probabilities (77 intents, then out-of-scope), as served;
        `present` [B] marks the rows whose profile counts (all of them when None);
        `texts` as in `predict_many`."""
        if profile is not None and present is not None and not present.any():
            profile = present = None
        return self.outputs(text, profile, present, None, None, texts).intent

    def predict_many(
        self,
        text_vecs: npt.ArrayLike,
        profile_vecs: Sequence[Vector | None] | None = None,
        speech_vecs: Sequence[Vector | None] | None = None,
        texts: Sequence[str] | None = None,
    ) -> list[UnderstandingResult]:
        """One batched forward of both heads. `text_vecs` [N, 384]; per message, a profile
        vector [128] and voice features [392] (`fusion.voice_emotion`) or None; `texts`: the
        messages themselves, for the heads' lexical cues (without them each head reads the
        embedding alone, which is less accurate)."""
        text = np.asarray(text_vecs, dtype=np.float32).reshape(
            -1, self.intent_model.trunk.config.in_dim
        )
        n = text.shape[0]
        if n == 0:
            return []
        profile, has_profile = self._rows(profile_vecs, n, self.profile_dim, "profile")
        speech, has_speech = self._rows(speech_vecs, n, self.speech_dim, "speech")
        out = self.outputs(text, profile, has_profile, speech, has_speech, texts)
        assert out.emotion is not None and out.decision is not None
        in_scope = out.intent[:, :-1]
        top = np.argsort(-in_scope, axis=1, kind="stable")[:, :2]
        # Python lists from here: per-element array access costs more than the heads.
        results = []
        for row, p, oos, label, score in zip(
            top.tolist(),
            in_scope[np.arange(n)[:, None], top].tolist(),
            out.intent[:, -1].tolist(),
            out.decision.argmax(axis=1).tolist(),
            out.emotion.tolist(),
            strict=True,
        ):
            # Out of scope wins the argmax only when it beats the best intent outright.
            out_of_scope = oos > p[0] or p[0] < self.oos_threshold
            results.append(
                UnderstandingResult(
                    intent=OUT_OF_SCOPE if out_of_scope else self.intents[row[0]],
                    intent_confidence=1.0 - p[0] if out_of_scope else p[0],
                    top2=tuple((self.intents[i], q) for i, q in zip(row, p, strict=True)),
                    emotion=SERVICE_EMOTIONS[label],
                    emotion_scores=dict(zip(SERVICE_EMOTIONS, score, strict=True)),
                )
            )
        return results

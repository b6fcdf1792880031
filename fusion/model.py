"""The fusion model: per-modality projections into a shared space, four fusion strategies,
task heads, a modality discriminator and cross-modal reconstruction decoders.

Modalities are always in the order `MODALITIES` = (text, speech, behaviour). A modality is
either present (its mask bit is set) or absent; an absent modality is never represented by
zeros that look like data: each strategy either leaves it out (its gate is 0) or, for
concatenation, puts a learned "missing" token in its slot.

Training objective (`joint_loss`):

    L = L_task + l1 * L_G + l2 * L_D + l3 * L_rec

- L_task: intent cross-entropy + `emotion_weight` * emotion cross-entropy, on the training
  view and, weighted by `subset_weight`, on a second view that keeps a random non-empty
  subset of each example's present modalities.
- L_D: the discriminator's cross-entropy at telling which modality a (detached) projection
  came from; it trains only the discriminator.
- L_G: the projections' adversarial loss, cross-entropy of the discriminator's prediction
  against the uniform distribution, computed through a frozen copy of the discriminator's
  weights; it trains only the projections, pushing them towards a shared space that does not
  reveal the modality. Both terms in one backward pass, no alternating optimisers.
- L_rec: from the fused vector, decoders reconstruct each modality that was really present
  (cosine loss for text embeddings, MSE for standardised speech features, BCE for the bag of
  event names). With modality dropout this is cross-modal: a dropped modality is
  reconstructed from the others.

Modality dropout (training only) hides each present modality with probability
`modality_dropout`, keeping at least one, so the fused model learns to work with any subset.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.func import functional_call

from fusion.behaviour import (
    NAME_VOCAB,
    PAD_ID,
    BehaviourEncoder,
    BehaviourEncoderConfig,
    BehaviourTensors,
)
from fusion.text_encoder import EMBEDDING_DIM

MODALITIES: tuple[str, ...] = ("text", "speech", "behaviour")
STRATEGIES: tuple[str, ...] = ("weighted", "concat", "gated", "cascade")


@dataclass(frozen=True, slots=True)
class FusionModelConfig:
    strategy: str = "gated"
    # Which modalities this model may use at all; single- and two-modality baselines are the
    # same model with a subset here.
    modalities: tuple[str, ...] = MODALITIES
    text_dim: int = EMBEDDING_DIM
    speech_dim: int = 128
    shared_dim: int = 128
    hidden_dim: int = 128
    n_intents: int = 77
    n_emotions: int = 5
    dropout: float = 0.1
    modality_dropout: float = 0.3
    # Weight of the task loss on a second view of each example that keeps a random non-empty
    # subset of its present modalities (see joint_loss); 0 turns the view off.
    subset_weight: float = 1.0
    # Which subsets the second view trains: "random" (per row, each present modality kept with
    # probability 1/2, never none) or "all" (every non-empty proper subset of the present
    # modalities, each as its own view, losses averaged): every combination gets trained.
    subset_mode: str = "random"
    # Late-fusion path: a linear intent/emotion expert per modality on its shared-space vector,
    # whose logits are added to the fused heads' logits for the modalities used. The fused
    # model then starts from the product of its unimodal experts and cannot do much worse
    # than its best component; with a modality missing the others' experts still speak.
    late_fusion: bool = False
    # With late fusion: weight of each expert's own cross-entropy (intent + emotion) on the
    # examples where its modality is present, so every expert is a classifier on its own
    # (not only a correction of the others) and still speaks well when the others are missing.
    expert_weight: float = 0.0
    label_smoothing: float = 0.0
    emotion_weight: float = 1.0
    l1: float = 0.1  # adversarial (projections fool the discriminator)
    l2: float = 0.1  # discriminator
    l3: float = 0.2  # reconstruction
    behaviour: BehaviourEncoderConfig = field(default_factory=BehaviourEncoderConfig)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose from {STRATEGIES}")
        if self.subset_mode not in ("random", "all"):
            raise ValueError(f"unknown subset_mode {self.subset_mode!r}")
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}")

    def uses(self) -> torch.Tensor:
        """[3] bool: which modalities the config allows."""
        return torch.tensor([m in self.modalities for m in MODALITIES])


@dataclass(frozen=True, slots=True)
class FusionOutput:
    z: torch.Tensor  # [B, D] fused vector
    gates: torch.Tensor  # [B, 3] contribution per modality, 0 where absent, rows sum to 1
    intent_logits: torch.Tensor  # [B, n_intents]
    emotion_logits: torch.Tensor  # [B, n_emotions]
    projections: torch.Tensor  # [B, 3, D] shared-space vector per modality
    used: torch.Tensor  # [B, 3] bool: present, allowed by config and not dropped
    present: torch.Tensor  # [B, 3] bool: present and allowed by config (before dropout)
    recon_text: torch.Tensor  # [B, text_dim]
    recon_speech: torch.Tensor  # [B, speech_dim] in standardised units
    recon_behaviour: torch.Tensor  # [B, NAME_VOCAB] logits of the bag of event names
    speech_target: torch.Tensor  # [B, speech_dim] standardised input features


@dataclass(frozen=True, slots=True)
class LossTerms:
    total: torch.Tensor
    task: torch.Tensor
    intent: torch.Tensor
    emotion: torch.Tensor
    adversarial: torch.Tensor  # L_G
    discriminator: torch.Tensor  # L_D
    reconstruction: torch.Tensor  # L_rec

    def as_floats(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in self.__dataclass_fields__}


def _mlp(n_in: int, hidden: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_out)
    )


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the modality axis of [B, 3] where mask; all-absent rows give zeros."""
    scores = scores.masked_fill(~mask, float("-inf"))
    any_present = mask.any(dim=-1, keepdim=True)
    safe = torch.where(any_present, scores, torch.zeros_like(scores))
    return torch.where(any_present, torch.softmax(safe, dim=-1), torch.zeros_like(scores))


def _shares(magnitudes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Normalise non-negative [B, 3] magnitudes over present modalities."""
    m = torch.where(mask, magnitudes, torch.zeros_like(magnitudes))
    total = m.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, m / total.clamp(min=1e-12), torch.zeros_like(m))


class WeightedFusion(nn.Module):
    """One learned weight per modality, renormalised over those present."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(len(MODALITIES)))
        self.post = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gates = _masked_softmax(self.logits.expand(h.shape[0], -1), mask)  # [B, 3]
        return self.post((gates.unsqueeze(-1) * h).sum(dim=1)), gates


class GatedFusion(nn.Module):
    """Per-example gates from each modality's vector and the mean of the present ones."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(2 * dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.post = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = mask.unsqueeze(-1).to(h.dtype)  # [B, 3, 1]
        context = (h * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)  # [B, D]
        pair = torch.cat([h, context.unsqueeze(1).expand_as(h)], dim=-1)  # [B, 3, 2D]
        gates = _masked_softmax(self.gate(pair).squeeze(-1), mask)  # [B, 3]
        return self.post((gates.unsqueeze(-1) * h).sum(dim=1)), gates


class ConcatFusion(nn.Module):
    """Concatenation + MLP; an absent modality's slot holds a learned "missing" token.

    Contributions are each present slot's share of the first layer's pre-activation norm,
    a linear attribution (the MLP has no gates of its own).
    """

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.missing = nn.Parameter(torch.zeros(len(MODALITIES), dim))
        nn.init.normal_(self.missing, std=0.02)
        self.first = nn.Linear(len(MODALITIES) * dim, hidden)
        self.rest = nn.Sequential(
            nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.LayerNorm(dim)
        )

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, n, dim = h.shape
        slots = torch.where(mask.unsqueeze(-1), h, self.missing.expand(batch, -1, -1))  # [B,3,D]
        z = self.rest(self.first(slots.reshape(batch, n * dim)))
        w = self.first.weight.view(-1, n, dim)  # [H, 3, D]
        parts = torch.einsum("bnd,hnd->bnh", slots, w)  # [B, 3, H]
        return z, _shares(parts.norm(dim=-1).detach(), mask)


class CascadeFusion(nn.Module):
    """Text first, then + speech, then + behaviour: each stage a gated residual update.

    An absent modality's stage is skipped. Contributions are the norms of the stage updates.
    """

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.zeros(dim))
        self.stages = nn.ModuleList(_mlp(2 * dim, hidden, dim, dropout) for _ in MODALITIES)
        self.stage_gates = nn.ModuleList(nn.Linear(2 * dim, 1) for _ in MODALITIES)
        self.norm = nn.LayerNorm(dim)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.start.expand(h.shape[0], -1)  # [B, D]
        sizes = []
        for i, (stage, gate) in enumerate(zip(self.stages, self.stage_gates, strict=True)):
            x = torch.cat([state, h[:, i]], dim=-1)  # [B, 2D]
            update = torch.sigmoid(gate(x)) * stage(x)  # [B, D]
            present = mask[:, i : i + 1]
            update = torch.where(present, update, torch.zeros_like(update))
            state = state + update
            sizes.append(update.norm(dim=-1))
        return self.norm(state), _shares(torch.stack(sizes, dim=1).detach(), mask)


class ModalityExperts(nn.Module):
    """One linear classifier per modality; the used modalities' logits are summed."""

    def __init__(self, dim: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(len(MODALITIES), dim, n_out))
        nn.init.normal_(self.weight, std=dim**-0.5)
        self.bias = nn.Parameter(torch.zeros(len(MODALITIES), n_out))

    def each(self, h: torch.Tensor) -> torch.Tensor:
        """[B, 3, D] -> [B, 3, K]: every modality's expert logits."""
        return torch.einsum("bmd,mdk->bmk", h, self.weight) + self.bias

    def forward(self, h: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
        return (self.each(h) * used.unsqueeze(-1).to(h.dtype)).sum(dim=1)


class Projection(nn.Module):
    """Modality features [B, n_in] -> shared space [B, D]."""

    def __init__(self, n_in: int, hidden: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(_mlp(n_in, hidden, dim, dropout), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class FusionModel(nn.Module):
    speech_mean: torch.Tensor
    speech_std: torch.Tensor
    uses: torch.Tensor

    def __init__(self, config: FusionModelConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or FusionModelConfig()
        d, hid = cfg.shared_dim, cfg.hidden_dim
        self.text_proj = Projection(cfg.text_dim, hid, d, cfg.dropout)
        self.speech_proj = Projection(cfg.speech_dim, hid, d, cfg.dropout)
        self.behaviour_enc = BehaviourEncoder(replace(cfg.behaviour, out_dim=d))
        self.behaviour_proj = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d))
        # Standardisation of speech features, fitted on training data and shipped with weights.
        self.register_buffer("speech_mean", torch.zeros(cfg.speech_dim))
        self.register_buffer("speech_std", torch.ones(cfg.speech_dim))
        self.register_buffer("uses", cfg.uses())
        self.fusion: nn.Module
        if cfg.strategy == "weighted":
            self.fusion = WeightedFusion(d)
        elif cfg.strategy == "gated":
            self.fusion = GatedFusion(d, hid // 2)
        elif cfg.strategy == "concat":
            self.fusion = ConcatFusion(d, hid, cfg.dropout)
        else:
            self.fusion = CascadeFusion(d, hid, cfg.dropout)
        self.intent_head = _mlp(d, hid, cfg.n_intents, cfg.dropout)
        self.emotion_head = _mlp(d, hid // 2, cfg.n_emotions, cfg.dropout)
        self.experts: ModalityExperts | None = (
            ModalityExperts(d, cfg.n_intents + cfg.n_emotions) if cfg.late_fusion else None
        )
        self.discriminator = _mlp(d, hid // 4, len(MODALITIES), 0.0)
        self.decode_text = _mlp(d, hid, cfg.text_dim, cfg.dropout)
        self.decode_speech = _mlp(d, hid, cfg.speech_dim, cfg.dropout)
        self.decode_behaviour = _mlp(d, hid // 2, NAME_VOCAB, cfg.dropout)

    def set_speech_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.speech_mean.copy_(mean)
        self.speech_std.copy_(std.clamp(min=1e-6))

    @staticmethod
    def _at_least_one(keep: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Rows of `keep` left empty get one of their present modalities back, at random."""
        empty = ~keep.any(dim=1) & present.any(dim=1)
        scores = torch.rand(present.shape, device=present.device).masked_fill(~present, -1.0)
        pick = nn.functional.one_hot(scores.argmax(dim=1), len(MODALITIES)).bool()
        return torch.where(empty.unsqueeze(1), pick, keep)

    def drop_modalities(self, present: torch.Tensor) -> torch.Tensor:
        """Training only: hide each present modality with probability p, never all of a row's."""
        p = self.config.modality_dropout
        if not self.training or p <= 0:
            return present
        keep = (torch.rand(present.shape, device=present.device) >= p) & present
        return self._at_least_one(keep, present)

    def random_subset(self, present: torch.Tensor) -> torch.Tensor:
        """Per row, each present modality kept with probability 1/2, never none of them."""
        keep = (torch.rand(present.shape, device=present.device) < 0.5) & present
        return self._at_least_one(keep, present)

    def fuse(
        self, h: torch.Tensor, used: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projections [B, 3, D] fused under `used` [B, 3]: z, gates, intent and emotion logits."""
        z, gates = self.fusion(h, used)  # [B, D], [B, 3]
        intent, emotion = self.intent_head(z), self.emotion_head(z)
        if self.experts is not None:
            late = self.experts(h, used)  # [B, n_intents + n_emotions]
            n = self.config.n_intents
            intent, emotion = intent + late[:, :n], emotion + late[:, n:]
        return z, gates, intent, emotion

    def all_subsets(self, present: torch.Tensor) -> list[torch.Tensor]:
        """Every non-empty proper subset of the allowed modalities, intersected with `present`."""
        allowed = [i for i, m in enumerate(MODALITIES) if m in self.config.modalities]
        out = []
        for bits in range(1, 2 ** len(allowed) - 1):
            keep = torch.zeros(len(MODALITIES), dtype=torch.bool, device=present.device)
            for j, i in enumerate(allowed):
                if bits >> j & 1:
                    keep[i] = True
            out.append(present & keep)
        return out

    def _encode(
        self,
        text: torch.Tensor,
        speech: torch.Tensor,
        behaviour: BehaviourTensors,
        masks: torch.Tensor,
        *,
        skip_absent: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Present modalities [B, 3], standardised speech [B, S] and each modality in the
        shared space [B, 3, D], zero where it is absent.

        With `skip_absent`, a modality absent from every row is not computed at all: its
        slot would be zeroed anyway (a chat turn has no speech, often no events).
        """
        present = masks.bool() & self.uses.unsqueeze(0)
        speech_std = (speech - self.speech_mean) / self.speech_std

        def needed(i: int) -> bool:
            return not skip_absent or bool(present[:, i].any())

        absent = text.new_zeros(text.shape[0], self.config.shared_dim)
        h = torch.stack(
            [
                self.text_proj(text) if needed(0) else absent,
                self.speech_proj(speech_std) if needed(1) else absent,
                self.behaviour_proj(self.behaviour_enc(behaviour)) if needed(2) else absent,
            ],
            dim=1,
        )  # [B, 3, D]
        # Whatever an absent modality's input holds (zeros, garbage, NaN) stops here.
        return present, speech_std, torch.where(present.unsqueeze(-1), h, torch.zeros_like(h))

    def infer(
        self,
        text: torch.Tensor,  # [B, text_dim]
        speech: torch.Tensor,  # [B, speech_dim] raw features
        behaviour: BehaviourTensors,  # [B, T] ids
        masks: torch.Tensor,  # [B, 3] bool, present modalities
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What serving needs of `forward` (eval mode): z, gates, intent and emotion logits,
        without the training-only decoders and without encoders of absent modalities."""
        present, _, h = self._encode(text, speech, behaviour, masks, skip_absent=True)
        return self.fuse(h, present)

    def forward(
        self,
        text: torch.Tensor,  # [B, text_dim]
        speech: torch.Tensor,  # [B, speech_dim] raw features
        behaviour: BehaviourTensors,  # [B, T] ids
        masks: torch.Tensor,  # [B, 3] bool, present modalities
    ) -> FusionOutput:
        present, speech_std, h = self._encode(text, speech, behaviour, masks)
        used = self.drop_modalities(present)
        z, gates, intent_logits, emotion_logits = self.fuse(h, used)
        return FusionOutput(
            z=z,
            gates=gates,
            intent_logits=intent_logits,
            emotion_logits=emotion_logits,
            projections=h,
            used=used,
            present=present,
            recon_text=self.decode_text(z),
            recon_speech=self.decode_speech(z),
            recon_behaviour=self.decode_behaviour(z),
            speech_target=torch.where(
                present[:, 1:2], speech_std, torch.zeros_like(speech_std)
            ).detach(),
        )


def _bag_of_names(behaviour: BehaviourTensors) -> torch.Tensor:
    """[B, NAME_VOCAB] multi-hot of the event names in each history."""
    bag = torch.zeros(
        behaviour.names.shape[0], NAME_VOCAB, device=behaviour.names.device, dtype=torch.float32
    )
    ones = behaviour.mask.to(torch.float32)
    bag.scatter_add_(1, behaviour.names, ones)
    bag[:, PAD_ID] = 0.0
    return (bag > 0).to(torch.float32)


def joint_loss(
    model: FusionModel,
    out: FusionOutput,
    text: torch.Tensor,  # [B, text_dim]
    behaviour: BehaviourTensors,
    intent: torch.Tensor,  # [B] long
    emotion: torch.Tensor,  # [B] long
) -> LossTerms:
    cfg = model.config

    def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)

    l_intent = ce(out.intent_logits, intent)
    l_emotion = ce(out.emotion_logits, emotion)
    task = l_intent + cfg.emotion_weight * l_emotion
    zero = out.z.sum() * 0.0
    if cfg.subset_weight > 0 and len(cfg.modalities) > 1:
        # The same projections fused under subsets of the present modalities: every smaller
        # combination is trained as a task of its own, so that a modality missing at test
        # time costs little against a model trained without it. Only the fusion module and
        # the heads run again.
        if cfg.subset_mode == "all":
            subsets = model.all_subsets(out.present)
        else:
            subsets = [model.random_subset(out.present)]
        sub_loss = zero
        for keep in subsets:
            rows_kept = keep.any(dim=1)
            if not bool(rows_kept.any()):
                continue
            _, _, i_sub, e_sub = model.fuse(out.projections[rows_kept], keep[rows_kept])
            sub_loss = sub_loss + (
                ce(i_sub, intent[rows_kept]) + cfg.emotion_weight * ce(e_sub, emotion[rows_kept])
            )
        task = task + cfg.subset_weight * sub_loss / len(subsets)

    if model.experts is not None and cfg.expert_weight > 0:
        # Each expert alone, on the rows where its modality is present.
        each = model.experts.each(out.projections)  # [B, 3, K]
        rows, cols = out.present.nonzero(as_tuple=True)
        if len(rows) > 0:
            n = cfg.n_intents
            picked = each[rows, cols]  # [N, K]
            task = task + cfg.expert_weight * (
                ce(picked[:, :n], intent[rows])
                + cfg.emotion_weight * ce(picked[:, n:], emotion[rows])
            )

    # Adversarial alignment over every present modality's projection.
    present = out.present  # [B, 3]
    rows, cols = present.nonzero(as_tuple=True)
    if len(cfg.modalities) > 1 and len(rows) > 0:
        proj = out.projections[rows, cols]  # [N, D]
        l_disc = nn.functional.cross_entropy(model.discriminator(proj.detach()), cols)
        frozen = {k: v.detach() for k, v in model.discriminator.named_parameters()}
        fooled = functional_call(model.discriminator, frozen, (proj,))  # [N, 3]
        l_adv = -torch.log_softmax(fooled, dim=-1).mean(dim=-1).mean()
    else:
        l_disc = l_adv = zero

    # Reconstruction of every modality that was really there, from the fused vector.
    per_row = torch.stack(
        [
            1.0 - nn.functional.cosine_similarity(out.recon_text, text, dim=-1),
            ((out.recon_speech - out.speech_target) ** 2).mean(dim=-1),
            nn.functional.binary_cross_entropy_with_logits(
                out.recon_behaviour, _bag_of_names(behaviour), reduction="none"
            ).mean(dim=-1),
        ],
        dim=1,
    )  # [B, 3]
    weights = present.to(per_row.dtype)
    counts = weights.sum(dim=0)  # [3]
    per_modality = (per_row * weights).sum(dim=0) / counts.clamp(min=1.0)  # [3]
    observed = counts > 0
    l_rec = per_modality[observed].mean() if bool(observed.any()) else zero

    total = task + cfg.l1 * l_adv + cfg.l2 * l_disc + cfg.l3 * l_rec
    return LossTerms(total, task, l_intent, l_emotion, l_adv, l_disc, l_rec)

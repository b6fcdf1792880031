"""The heads folded for serving: what `IntentModel` (with its temperature) and `EmotionModel`
compute, with every constant folded in at load time (`ServingHeads`). A GPU runs it in torch;
a CPU runs the same folded constants as ONNX Runtime graphs (`fusion.heads.graph`). Both
return `HeadOutputs`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fusion.heads.lexical import lexical_hashes
from fusion.heads.modules import EmotionModel, EnsembleMLP, IntentModel

__all__ = ["HeadOutputs", "ServingHeads", "device_tensor"]

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class HeadOutputs:
    intent: Vector  # [B, 78] calibrated probabilities, the member average
    emotion: Vector | None  # [B, 7] calibrated probabilities; None without an emotion head
    decision: Vector | None  # [B, 7] decision scores (argmax = the label)


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


def device_tensor(array: npt.NDArray[Any], device: torch.device) -> torch.Tensor:
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
    called. It serves on a GPU; on a CPU, `fusion.heads.graph.GraphHeads` runs the same
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
        intent = device_tensor(
            rows[:, :split].reshape(len(rows), self.intent_shape[0], -1), self.device
        )
        if self.emotion is None:
            return intent.transpose(0, 1), None
        emotion = device_tensor(
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

    def run(
        self,
        text: Vector,
        profile: Vector | None,
        has_profile: npt.NDArray[np.bool_] | None,
        speech: Vector | None,
        has_speech: npt.NDArray[np.bool_] | None,
        texts: Sequence[str] | None,
    ) -> HeadOutputs:
        """Both heads, as `GraphHeads.run`: `text` [B, D]; `profile` [B, P] or None when no
        row has one, `has_profile` [B] or None when every row does; the same for `speech`;
        `texts` for the lexical cues."""
        if texts is not None and len(texts) != text.shape[0]:
            raise ValueError(f"{len(texts)} texts for {text.shape[0]} messages")

        def tensor(a: npt.NDArray[Any] | None) -> torch.Tensor | None:
            return None if a is None else device_tensor(a, self.device)

        with torch.inference_mode():
            hidden = self.hidden(device_tensor(text, self.device))
            intent_lexical, emotion_lexical = self.lexical_logits(texts)
            probs = self.intent_probs(hidden, tensor(profile), tensor(has_profile), intent_lexical)
            if self.emotion is None:
                return HeadOutputs(probs.cpu().numpy(), None, None)
            scores, decision = self.emotion_probs(
                hidden, tensor(speech), tensor(has_speech), emotion_lexical
            )
            return HeadOutputs(probs.cpu().numpy(), scores.cpu().numpy(), decision.cpu().numpy())

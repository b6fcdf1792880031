"""The intent and emotion heads as ONNX graphs, run by ONNX Runtime on the CPU.

At batch 1, after a MiniLM forward, the heads' time is mostly the fixed cost of each tensor
operation (a cold `x + 1` in torch takes about 25 us) and the reading of the first layer's
weights. So on a CPU the heads run as one graph per call, built at load time from the
constants `ServingHeads` folds (temperatures, input scale, biases, standardisation), and the
intent members' first layer, the largest weights, and the FiLM generator's last layer are
stored as 8-bit integers (`MatMulNBits`, per-block scales) and multiplied with 8-bit
activations: a quarter of the bytes. Every row is quantised on its own, so a message gets
the same result alone as in a batch. The emotion heads keep float32 weights, so their
outputs are the modules' (within 1e-5) and their reported figures stay the modules'.

Four graphs are built, with and without the FiLM generator and with and without the speech
head, so that a message pays for neither when it carries neither.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from fusion.heads.lexical import lexical_hashes
from fusion.heads.serving import HeadOutputs, ServingHeads

__all__ = ["GraphHeads", "quantize_blocks"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# Rows of 384 inputs split into 3 blocks, each with its own scale. Blocks of 32 were slower
# (0.36 against 0.30 ms cold) and agreed no better with the float32 model on Banking77 train
# and CLINC150 oos_val (docs/understanding.md, Latency).
BLOCK = 128
_OPSET = 20
_GATHER_BYTES = 16 << 20
_SHARED_BYTES = 64 << 10


def quantize_blocks(weight: FloatArray, block: int) -> tuple[npt.NDArray[np.uint8], FloatArray]:
    """[out, in] float weights -> (`MatMulNBits`' 8-bit blocks [out, in/block, block], one
    scale per block [out * in/block]): symmetric, stored offset by 128 (the operator's
    default zero point)."""
    out_dim, in_dim = weight.shape
    if in_dim % block:
        raise ValueError(f"{in_dim} inputs do not split into blocks of {block}")
    blocks = weight.reshape(out_dim, in_dim // block, block).astype(np.float32)
    scale = np.abs(blocks).max(axis=2) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(blocks / scale[:, :, None]), -127, 127) + 128
    return q.astype(np.uint8), scale.reshape(-1).astype(np.float32)


class _Builder:
    """Nodes and initialisers of one graph; names are unique per graph. Constants of
    _SHARED_BYTES or more are named by their contents and kept in `shared`: the graph
    declares them as external data, which its session takes from memory
    (`SessionOptions.add_external_initializers`), so no serialised copy is parsed."""

    def __init__(self, shared: dict[str, npt.NDArray[Any]]) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self.shared = shared
        self.uses: list[str] = []
        self._count = 0

    def const(self, value: npt.ArrayLike, dtype: type = np.float32) -> str:
        array: npt.NDArray[Any] = np.ascontiguousarray(value, dtype)
        if array.nbytes < _SHARED_BYTES:
            name = f"c{len(self.constants)}"
            self.constants.append(numpy_helper.from_array(array, name))
            return name
        name = "w" + hashlib.blake2b(array.tobytes(), digest_size=8).hexdigest()
        self.shared.setdefault(name, array)
        if name not in self.uses:
            self.uses.append(name)
            tensor = onnx.TensorProto(
                name=name,
                data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                dims=array.shape,
                data_location=onnx.TensorProto.EXTERNAL,
            )
            for key, text in (
                ("location", "memory"),
                ("offset", "0"),
                ("length", str(array.nbytes)),
            ):
                tensor.external_data.add(key=key, value=text)
            self.constants.append(tensor)
        return name

    def op(self, kind: str, *inputs: str, domain: str = "", out: str = "", **attrs: Any) -> str:
        self._count += 1
        out = out or f"t{self._count}"
        self.nodes.append(helper.make_node(kind, list(inputs), [out], domain=domain, **attrs))
        return out

    def gemm(self, x: str, weight_t: FloatArray, bias: FloatArray, block: int = 0) -> str:
        """x [B, in] @ weight_t [in, out] + bias; with a `block`, the weights in 8 bits
        (`quantize_blocks`) and each row of x quantised to 8 bits per block as well."""
        if not block:
            return self.op("Gemm", x, self.const(weight_t), self.const(bias))
        q, scales = quantize_blocks(np.ascontiguousarray(weight_t.T), block)
        return self.op(
            "MatMulNBits", x, self.const(q, np.uint8), self.const(scales), "", "",
            self.const(bias), domain="com.microsoft", K=weight_t.shape[0], N=weight_t.shape[1],
            bits=8, block_size=block, accuracy_level=4,
        )  # fmt: skip

    def members(self, x: str, members: int, width: int) -> str:
        """[B, ..., M*W] -> [B, M, 1, W]: a row per member, which a [M, W, C] weight
        multiplies member by member (MatMul broadcasts over B), with no transposes."""
        return self.op("Reshape", x, self.const([-1, members, 1, width], np.int64))

    def columns(self, x: str, start: int, stop: int) -> str:
        """x[..., start:stop]."""
        return self.op(
            "Slice", x, self.const([start], np.int64), self.const([stop], np.int64),
            self.const([-1], np.int64),
        )  # fmt: skip

    def expert(self, hidden: str, w2: FloatArray, start: str, mapping: FloatArray) -> str:
        """Members' hidden units [B, M, 1, H] -> mapped member-averaged probabilities [B, E],
        floored at 1e-6 as the module's are before their log."""
        members, _, classes = w2.shape
        logits = self.op("Add", self.op("MatMul", hidden, self.const(w2)), start)
        probs = self.op("Softmax", logits, axis=-1)  # [B, M, 1, C]
        flat = self.op("Reshape", probs, self.const([-1, members * classes], np.int64))
        return self.op("Max", self.op("MatMul", flat, self.const(mapping)), self.const(1e-6))


def _numpy(t: Any) -> FloatArray:
    out: FloatArray = t.detach().float().cpu().numpy()
    return out


class GraphHeads:
    """`ServingHeads`' computation as ONNX Runtime sessions (CPU). Thread-safe: a session
    may run from several threads at once, each call on its caller's thread."""

    def __init__(self, heads: ServingHeads, *, quantize: bool = True, block: int = BLOCK) -> None:
        self.has_emotion = heads.emotion is not None
        self.in_dim = heads.first.weight_t.shape[0]
        self.profile_dim = heads.film1.weight_t.shape[0]
        self.speech_dim = heads.speech_first.weight_t.shape[0] if self.has_emotion else 0
        self._lexicon(heads)
        shared: dict[str, npt.NDArray[Any]] = {}
        graphs = {
            (profile, speech): self._graph(
                _Builder(shared), heads, profile, speech, quantize, block
            )
            for profile in (False, True)
            for speech in ((False, True) if self.has_emotion else (False,))
        }
        # Held for the sessions' lifetime: they read these arrays' memory.
        self._shared = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in shared.items()}
        self._sessions = {
            key: ort.InferenceSession(
                g.SerializeToString(), self._options(uses), providers=["CPUExecutionProvider"]
            )
            for key, (g, uses) in graphs.items()
        }

    def _options(self, shared: Sequence[str]) -> ort.SessionOptions:
        options = ort.SessionOptions()
        # One thread per call: the graphs are small, and the server runs batches side by
        # side, each on its caller's thread (fusion.serving.ThreadPolicy).
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Small graphs: an arena would hold a first chunk of about 7 MB per session.
        options.enable_cpu_mem_arena = False
        options.add_external_initializers(list(shared), [self._shared[n] for n in shared])
        return options

    # ------------------------------------------------------------------ lexical cues

    def _lexicon(self, heads: ServingHeads) -> None:
        """One table for every head's lexical rows: each table's buckets at its own row offset
        and its own columns, then a zero row (padding) and a row holding the last biases."""
        width = heads.bias_row.shape[0]
        offsets, rows = [], 0
        for buckets, _, _ in heads.lexicon_tables:
            offsets.append(rows)
            rows += buckets
        # The last biases ride as one more row, which every message reads with weight 1.
        table = np.zeros((rows + 2, width), dtype=np.float32)
        table[rows + 1] = heads.bias_row
        for (buckets, column, part), offset in zip(heads.lexicon_tables, offsets, strict=True):
            table[offset : offset + buckets, column : column + part.shape[1]] = part
        self.table = table
        self.zero_row, self.bias_row = rows, rows + 1
        self.bucket_offsets = [
            (b, o) for (b, _, _), o in zip(heads.lexicon_tables, offsets, strict=True)
        ]

    def lexical_inputs(self, texts: Sequence[str] | None, n: int) -> tuple[IntArray, FloatArray]:
        """Each message's table rows [n, L] (the biases' row, then each head's distinct buckets
        of its grams, padded with the zero row) and their weights [n, 1, L]: 1 for the biases,
        1/sqrt(count) for a head's buckets, as `LexicalBag` weighs them."""
        if texts is None or not self.bucket_offsets:
            return np.full((n, 1), self.bias_row, np.int64), np.ones((n, 1, 1), np.float32)
        rows: list[list[int]] = []
        weights: list[list[float]] = []
        for text in texts:
            hashes = lexical_hashes(text)
            ids = [self.bias_row]
            shares = [1.0]
            for buckets, offset in self.bucket_offsets:
                distinct = {h % buckets for h in hashes}
                ids.extend(distinct if offset == 0 else (offset + d for d in distinct))
                shares.extend([1.0 / math.sqrt(max(len(distinct), 1))] * len(distinct))
            rows.append(ids)
            weights.append(shares)
        if n == 1:
            return np.array(rows, np.int64), np.array(weights, np.float32)[:, None, :]
        width = max(len(r) for r in rows)
        ids_out = np.full((n, width), self.zero_row, np.int64)
        weights_out = np.zeros((n, 1, width), np.float32)
        for i, (r, w) in enumerate(zip(rows, weights, strict=True)):
            ids_out[i, : len(r)] = r
            weights_out[i, 0, : len(w)] = w
        return ids_out, weights_out

    # ------------------------------------------------------------------ graph

    def _graph(
        self,
        g: _Builder,
        heads: ServingHeads,
        profile: bool,
        speech: bool,
        quantize: bool,
        block: int,
    ) -> tuple[onnx.ModelProto, list[str]]:
        """One variant's graph (with or without the FiLM generator and the speech head), and
        the names of the shared constants it reads."""
        inputs = [
            _input("text", self.in_dim),
            _input("lex_ids", "L", TensorProto.INT64),
            helper.make_tensor_value_info("lex_weight", TensorProto.FLOAT, ["B", 1, "L"]),
        ]
        m, h = heads.intent_shape
        split = m * h
        # The input scale folded into the first layers' weights (one node fewer).
        first = _numpy(heads.first.weight_t) * heads.input_scale  # [in, units]
        bias = _numpy(heads.first.bias)
        block = block if quantize else 0
        intent_pre = g.gemm("text", first[:, :split], bias[:split], block)
        hidden = g.members(g.op("Gelu", intent_pre), m, h)  # [B, M, 1, H]

        # [B, 1, both heads' M*C]: each message's weighted table rows, the biases' included.
        rows = g.op("Gather", g.const(self.table), "lex_ids", axis=0)  # [B, L, M*C]
        lexical = g.op("MatMul", "lex_weight", rows)
        classes = heads.intent_w2.shape[1]
        if profile:
            inputs.append(_input("profile", self.profile_dim))
            f1 = g.op(
                "Gelu", g.gemm("profile", _numpy(heads.film1.weight_t), _numpy(heads.film1.bias))
            )
            film2 = _numpy(heads.film2.weight_t)
            gen = g.gemm(f1, film2, _numpy(heads.film2.bias), _fits(film2, block))
            gen = g.op("Reshape", gen, g.const([-1, 1, 1, heads.film_identity.shape[0]], np.int64))
            w = heads.film_width
            gamma, beta = g.columns(gen, 0, w), g.columns(gen, w, 2 * w)
            hidden = g.op("Add", g.op("Mul", hidden, gamma), beta)
        logits = g.op(
            "Add",
            g.op("MatMul", hidden, g.const(_numpy(heads.intent_w2).transpose(0, 2, 1))),
            g.members(g.columns(lexical, 0, heads.intent_width), m, classes),
        )  # [B, M, 1, C]
        if profile and heads.film_identity.shape[0] > 2 * heads.film_width:
            bias_cols = g.columns(gen, 2 * heads.film_width, heads.film_identity.shape[0])
            logits = g.op("Add", logits, g.op("Div", bias_cols, g.const(heads.temperature)))
        probs = g.op(
            "ReduceMean", g.op("Softmax", logits, axis=-1), g.const([1, 2], np.int64), keepdims=0
        )
        names = [g.op("Identity", probs, out="intent")]

        if self.has_emotion:
            me, he = heads.emotion_shape
            text_hidden = g.members(
                g.op("Gelu", g.gemm("text", first[:, split:], bias[split:])), me, he
            )
            start = g.members(
                g.columns(lexical, heads.intent_width, heads.bias_row.shape[0]),
                me,
                heads.emotion_w2.shape[2],
            )
            text = g.expert(
                text_hidden, _numpy(heads.emotion_w2), start, _numpy(heads.text_map)
            )  # [B, 7]
            log_text = g.op("Log", text)
            if speech:
                inputs.append(_input("speech", self.speech_dim))
                ms, hs = heads.speech_shape
                sf = heads.speech_first
                speech_hidden = g.members(
                    g.op("Gelu", g.gemm("speech", _numpy(sf.weight_t), _numpy(sf.bias))), ms, hs
                )
                b2 = _numpy(heads.speech_b2).reshape(ms, 1, -1)
                speech_w2, speech_map = _numpy(heads.speech_w2), _numpy(heads.speech_map)
                log_speech = g.op(
                    "Log", g.expert(speech_hidden, speech_w2, g.const(b2), speech_map)
                )
                w_text, w_speech = heads.fusion_weight
                text_decision = g.op(
                    "Add",
                    g.op("Mul", log_text, g.const(w_text)),
                    g.op(
                        "Add",
                        g.op("Mul", log_speech, g.const(w_speech)),
                        g.const(_numpy(heads.fusion_bias)),
                    ),
                )
                text_probs = g.op("Softmax", text_decision, axis=-1)
            else:
                text_probs = g.op(
                    "Div", text, g.op("ReduceSum", text, g.const([1], np.int64), keepdims=1)
                )
                text_decision = g.op("Add", log_text, g.const(_numpy(heads.text_offsets)))
            names += [
                g.op("Identity", text_probs, out="emotion"),
                g.op("Identity", text_decision, out="decision"),
            ]
        graph = helper.make_graph(
            g.nodes,
            "heads",
            inputs,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
            g.constants,
        )
        model = helper.make_model(
            graph,
            opset_imports=[
                helper.make_opsetid("", _OPSET),
                helper.make_opsetid("com.microsoft", 1),
            ],
        )
        model.ir_version = 10
        return model, g.uses

    # ------------------------------------------------------------------ run

    def run(
        self,
        text: FloatArray,
        profile: FloatArray | None,
        has_profile: npt.NDArray[np.bool_] | None,
        speech: FloatArray | None,
        has_speech: npt.NDArray[np.bool_] | None,
        texts: Sequence[str] | None,
    ) -> HeadOutputs:
        """`text` [B, D]; `profile` [B, P] or None when no row has one, `has_profile` [B] or
        None when every row does; the same for `speech`; `texts` for the lexical cues."""
        n = text.shape[0]
        if texts is not None and len(texts) != n:
            raise ValueError(f"{len(texts)} texts for {n} messages")
        if not self.has_emotion:
            speech = has_speech = None
        if (profile is None or has_profile is None) and (speech is None or has_speech is None):
            return self._run(text, profile, speech, texts)
        # A mixed batch: each group of rows alike (with or without a profile, with or without
        # speech) runs through its own graph, which spares every graph a selection per row.
        with_profile = _rows_with(profile, has_profile, n)
        with_speech = _rows_with(speech, has_speech, n)
        columns: list[FloatArray] = []
        for p in (False, True):
            for v in (False, True):
                rows = np.flatnonzero((with_profile == p) & (with_speech == v))
                if not rows.size:
                    continue
                part = self._run(
                    text[rows],
                    profile[rows] if p and profile is not None else None,
                    speech[rows] if v and speech is not None else None,
                    None if texts is None else [texts[i] for i in rows.tolist()],
                )
                outputs = [o for o in (part.intent, part.emotion, part.decision) if o is not None]
                if not columns:
                    columns = [np.empty((n, o.shape[1]), np.float32) for o in outputs]
                for column, o in zip(columns, outputs, strict=True):
                    column[rows] = o
        if not self.has_emotion:
            return HeadOutputs(columns[0], None, None)
        return HeadOutputs(columns[0], columns[1], columns[2])

    def _run(
        self,
        text: FloatArray,
        profile: FloatArray | None,
        speech: FloatArray | None,
        texts: Sequence[str] | None,
    ) -> HeadOutputs:
        """Rows alike: every row has a profile or none does, and the same for speech."""
        n = text.shape[0]
        ids, weights = self.lexical_inputs(texts, n)
        feed: dict[str, Any] = {"text": text, "lex_ids": ids, "lex_weight": weights}
        if profile is not None:
            feed["profile"] = profile
        if speech is not None:
            feed["speech"] = speech
        session = self._sessions[(profile is not None, speech is not None)]
        # The gathered lexical rows are [B, L, columns], L the longest message's: a batch
        # with a long message runs in slices that keep them under _GATHER_BYTES.
        per_run = max(1, _GATHER_BYTES // (ids.shape[1] * self.table.shape[1] * 4))
        if per_run >= n:
            out = session.run(None, feed)
        else:
            parts = [
                session.run(None, {k: v[start : start + per_run] for k, v in feed.items()})
                for start in range(0, n, per_run)
            ]
            out = [np.concatenate(column) for column in zip(*parts, strict=True)]
        if not self.has_emotion:
            return HeadOutputs(out[0], None, None)
        return HeadOutputs(out[0], out[1], out[2])


def _rows_with(
    vectors: FloatArray | None, present: npt.NDArray[np.bool_] | None, n: int
) -> npt.NDArray[np.bool_]:
    if vectors is None:
        return np.zeros(n, np.bool_)
    return np.ones(n, np.bool_) if present is None else np.asarray(present, np.bool_)


def _input(name: str, width: int | str, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """A graph input [B, width], B the batch."""
    return helper.make_tensor_value_info(name, dtype, ["B", width])


def _fits(weight_t: FloatArray, block: int) -> int:
    """`block` when the layer's inputs split into such blocks, else 0 (float32)."""
    return block if block and weight_t.shape[0] % block == 0 else 0

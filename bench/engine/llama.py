"""A small Llama-architecture decoder in plain PyTorch: RMSNorm, rotary
embeddings, grouped-query attention, a SiLU-gated MLP.

Built at random from a Hugging Face config.json (no weights are read), in
the config's torch_dtype. Every weight, KV-cache and activation tensor comes
from memory.Ledger.empty(), and ops write into them with out= or in place,
so on CPU the ledger sees what a GPU allocator would. Works unchanged on a
GPU (then CUDA's allocator is the limit).

Attention is computed in query chunks of CHUNK rows with an explicit causal
mask (no fused SDPA kernel: PyTorch 1.13, Debian's, has none, and the chunk
bounds the score matrix to heads x CHUNK x keys). A request owns its KV
cache, allocated whole for prompt + max new tokens when it starts (as a
static cache does), so decode never allocates KV.
"""

import json
import math

import torch

from memory import Ledger

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16,
           "float16": torch.float16}

# Query rows per attention chunk: scores are heads x CHUNK x keys.
CHUNK = 64


class Spec:
    """The fields of a Llama config.json the model needs."""

    def __init__(self, config: dict):
        self.hidden = config["hidden_size"]
        self.intermediate = config["intermediate_size"]
        self.layers = config["num_hidden_layers"]
        self.heads = config["num_attention_heads"]
        self.kv_heads = config.get("num_key_value_heads", self.heads)
        self.head_dim = config.get("head_dim") or self.hidden // self.heads
        self.vocab = config["vocab_size"]
        self.max_positions = config["max_position_embeddings"]
        self.eps = config.get("rms_norm_eps", 1e-6)
        self.rope_theta = config.get("rope_theta", 10000.0)
        self.dtype = _DTYPES[config.get("torch_dtype", "bfloat16")]

    @classmethod
    def load(cls, path: str) -> "Spec":
        with open(path) as f:
            return cls(json.load(f))


class Llama:
    """The decoder: weights, and forward() over a request's KV cache."""

    def __init__(self, spec: Spec, ledger: Ledger, seed: int = 0):
        self.spec = spec
        self.ledger = ledger
        generator = torch.Generator().manual_seed(seed)
        s = spec

        def weight(rows, cols):
            # Stored as (in, out) so that matmul(x, w) is the projection.
            w = ledger.empty((rows, cols), s.dtype)
            w.copy_(torch.randn(rows, cols, generator=generator) * 0.02)
            return w

        def norm():
            w = ledger.empty((s.hidden,), s.dtype)
            w.fill_(1.0)
            return w

        q_width, kv_width = s.heads * s.head_dim, s.kv_heads * s.head_dim
        self.embed = weight(s.vocab, s.hidden)
        self.blocks = []
        for _ in range(s.layers):
            self.blocks.append({
                "attn_norm": norm(), "q": weight(s.hidden, q_width),
                "k": weight(s.hidden, kv_width), "v": weight(s.hidden, kv_width),
                "o": weight(q_width, s.hidden), "mlp_norm": norm(),
                "gate": weight(s.hidden, s.intermediate),
                "up": weight(s.hidden, s.intermediate),
                "down": weight(s.intermediate, s.hidden)})
        self.final_norm = norm()
        self.lm_head = weight(s.hidden, s.vocab)
        # Rotary tables, one row per position (Hugging Face's layout: the
        # frequencies repeated over both halves of the head).
        inv = 1.0 / (s.rope_theta ** (torch.arange(0, s.head_dim, 2).float()
                                      / s.head_dim))
        freqs = torch.outer(torch.arange(s.max_positions).float(), inv)
        angles = torch.cat([freqs, freqs], dim=-1)
        self.cos = ledger.empty(angles.shape, s.dtype)
        self.cos.copy_(angles.cos())
        self.sin = ledger.empty(angles.shape, s.dtype)
        self.sin.copy_(angles.sin())

    def new_cache(self, tokens: int) -> torch.Tensor:
        """A request's KV cache for `tokens` positions:
        (layers, 2, kv_heads, tokens, head_dim)."""
        s = self.spec
        return self.ledger.empty((s.layers, 2, s.kv_heads, tokens, s.head_dim),
                                 s.dtype)

    def forward(self, ids: torch.Tensor, pos: int, cache: torch.Tensor):
        """Runs ids (positions pos..) through the model, writing their K and
        V into cache; returns the last position's logits."""
        s, e = self.spec, self.ledger
        t = ids.shape[0]
        x = e.empty((t, s.hidden), s.dtype)
        torch.index_select(self.embed, 0, ids, out=x)
        for layer, w in enumerate(self.blocks):
            self._attention(x, w, pos, cache[layer])
            self._mlp(x, w)
        h = self._norm(x[-1:], self.final_norm)
        del x
        logits = e.empty((1, s.vocab), s.dtype)
        torch.matmul(h, self.lm_head, out=logits)
        return logits

    def _norm(self, x, weight):
        e = self.ledger
        out = e.empty(x.shape, x.dtype)
        var = e.empty((x.shape[0], 1), x.dtype)
        torch.mul(x, x, out=out)
        torch.mean(out, -1, keepdim=True, out=var)
        var.add_(self.spec.eps).rsqrt_()
        torch.mul(x, var, out=out)
        out.mul_(weight)
        return out

    def _rotate(self, x, pos):
        """Applies rotary embeddings to x (tokens, heads, head_dim) in place."""
        t, half = x.shape[0], x.shape[2] // 2
        cos = self.cos[pos:pos + t].unsqueeze(1)
        sin = self.sin[pos:pos + t].unsqueeze(1)
        rot = self.ledger.empty(x.shape, x.dtype)
        rot[..., :half].copy_(x[..., half:]).neg_()
        rot[..., half:].copy_(x[..., :half])
        rot.mul_(sin)
        x.mul_(cos).add_(rot)

    def _attention(self, x, w, pos, cache):
        s, e = self.spec, self.ledger
        t = x.shape[0]
        h = self._norm(x, w["attn_norm"])
        q = e.empty((t, s.heads * s.head_dim), s.dtype)
        torch.matmul(h, w["q"], out=q)
        for slot, name in ((0, "k"), (1, "v")):
            new = e.empty((t, s.kv_heads * s.head_dim), s.dtype)
            torch.matmul(h, w[name], out=new)
            new = new.view(t, s.kv_heads, s.head_dim)
            if slot == 0:
                self._rotate(new, pos)
            cache[slot, :, pos:pos + t].copy_(new.transpose(0, 1))
            del new
        del h
        q = q.view(t, s.heads, s.head_dim)
        self._rotate(q, pos)
        out = e.empty((t, s.heads, s.head_dim), s.dtype)
        for c0 in range(0, t, CHUNK):
            self._attend_chunk(q, cache, pos, c0, min(t, c0 + CHUNK), out)
        del q
        o = e.empty((t, s.hidden), s.dtype)
        torch.matmul(out.view(t, -1), w["o"], out=o)
        del out
        x.add_(o)

    def _attend_chunk(self, q, cache, pos, c0, c1, out):
        """Causal attention of query rows c0..c1 over keys 0..pos+c1."""
        s, e = self.spec, self.ledger
        rows, keys, group = c1 - c0, pos + c1, s.heads // s.kv_heads
        qc = e.empty((s.kv_heads, group, rows, s.head_dim), s.dtype)
        qc.copy_(q[c0:c1].view(rows, s.kv_heads, group, s.head_dim)
                 .permute(1, 2, 0, 3))
        qc = qc.view(s.kv_heads, group * rows, s.head_dim)
        scores = e.empty((s.kv_heads, group * rows, keys), s.dtype)
        torch.bmm(qc, cache[0, :, :keys].transpose(1, 2), out=scores)
        del qc
        scores.mul_(1.0 / math.sqrt(s.head_dim))
        if rows > 1:
            # Key pos+c0+j is in query i's future when j > i.
            future = e.empty((rows, rows), torch.bool)
            future.fill_(True).triu_(1)
            scores.view(s.kv_heads, group, rows, keys)[..., keys - rows:] \
                .masked_fill_(future, float("-inf"))
            del future
        row = e.empty((s.kv_heads, group * rows, 1), s.dtype)
        torch.amax(scores, -1, keepdim=True, out=row)
        scores.sub_(row).exp_()
        torch.sum(scores, -1, keepdim=True, out=row)
        scores.div_(row)
        del row
        oc = e.empty((s.kv_heads, group * rows, s.head_dim), s.dtype)
        torch.bmm(scores, cache[1, :, :keys], out=oc)
        del scores
        out[c0:c1].view(rows, s.kv_heads, group, s.head_dim).copy_(
            oc.view(s.kv_heads, group, rows, s.head_dim).permute(2, 0, 1, 3))

    def _mlp(self, x, w):
        s, e = self.spec, self.ledger
        t = x.shape[0]
        h = self._norm(x, w["mlp_norm"])
        gate = e.empty((t, s.intermediate), s.dtype)
        torch.matmul(h, w["gate"], out=gate)
        up = e.empty((t, s.intermediate), s.dtype)
        torch.matmul(h, w["up"], out=up)
        del h
        torch.nn.functional.silu(gate, inplace=True)
        gate.mul_(up)
        del up
        down = e.empty((t, s.hidden), s.dtype)
        torch.matmul(gate, w["down"], out=down)
        del gate
        x.add_(down)

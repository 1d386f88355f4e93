"""The two model backends behind the serving loop, one interface:

    backend.new_request(prompt_tokens, max_new_tokens) -> Request
    request.prefill() ; request.decode_one() ; request.close()

"plain": llama.Llama, plain PyTorch, every tensor through memory.Ledger
(CPU mode's enforced limit). "transformers": a Hugging Face model built at
random from the config (no weights downloaded) with its own DynamicCache, for
a GPU, where CUDA's allocator is the limit.

Token ids are synthetic: there is no tokenizer, prompt ids are random and
each output token is drawn uniformly at random (the logits are computed and
discarded), so every request generates exactly max_new_tokens.
"""

import json

import torch

from memory import Ledger


class PlainBackend:
    def __init__(self, config_path: str, ledger: Ledger, seed: int):
        from llama import Llama, Spec
        self.model = Llama(Spec.load(config_path), ledger, seed)
        self.vocab = self.model.spec.vocab
        self.max_positions = self.model.spec.max_positions

    def new_request(self, prompt_tokens, max_new_tokens, seed):
        return _PlainRequest(self, prompt_tokens, max_new_tokens, seed)


class _PlainRequest:
    def __init__(self, backend, prompt_tokens, max_new_tokens, seed):
        self._model = backend.model
        self._generator = torch.Generator().manual_seed(seed)
        self._vocab = backend.vocab
        self._prompt = prompt_tokens
        self._max_new = max_new_tokens
        self._cache = None
        self._pos = 0

    def prefill(self) -> int:
        # The request's whole KV cache, prompt + max new tokens, up front.
        self._cache = self._model.new_cache(self._prompt + self._max_new)
        ids = torch.randint(0, self._vocab, (self._prompt,),
                            generator=self._generator)
        with torch.no_grad():
            self._model.forward(ids.to(self._model.ledger.device), 0, self._cache)
        self._pos = self._prompt
        return self._sample()

    def decode_one(self, token: int) -> int:
        ids = torch.tensor([token], device=self._model.ledger.device)
        with torch.no_grad():
            self._model.forward(ids, self._pos, self._cache)
        self._pos += 1
        return self._sample()

    def _sample(self) -> int:
        return int(torch.randint(0, self._vocab, (1,), generator=self._generator))

    def close(self):
        self._cache = None


class TransformersBackend:
    """A transformers model at random from config.json, on the GPU, bf16."""

    def __init__(self, config_path: str, device: torch.device, dtype, seed: int):
        import transformers
        if device.type == "cuda" and hasattr(torch.backends.cuda,
                                              "enable_cudnn_sdp"):
            # cuDNN's SDPA was seen to fail under concurrent threads on an
            # H100; flash / memory-efficient kernels do not.
            torch.backends.cuda.enable_cudnn_sdp(False)
        torch.manual_seed(seed)
        with open(config_path) as f:
            fields = json.load(f)
        config = transformers.AutoConfig.for_model(fields.pop("model_type"),
                                                   **fields)
        with torch.device(device):
            self.model = transformers.AutoModelForCausalLM.from_config(
                config, torch_dtype=dtype, attn_implementation="sdpa")
        self.model.eval()
        self.device = device
        self.vocab = config.vocab_size
        self.max_positions = config.max_position_embeddings

    def new_request(self, prompt_tokens, max_new_tokens, seed):
        return _TransformersRequest(self, prompt_tokens, seed)


class _TransformersRequest:
    def __init__(self, backend, prompt_tokens, seed):
        import transformers
        self._backend = backend
        self._generator = torch.Generator().manual_seed(seed)
        self._prompt = prompt_tokens
        self._cache = transformers.DynamicCache()

    def _forward(self, ids):
        with torch.no_grad():
            try:  # only the last position's logits (newer transformers)
                self._backend.model(ids, past_key_values=self._cache,
                                    use_cache=True, logits_to_keep=1)
            except TypeError:
                self._backend.model(ids, past_key_values=self._cache,
                                    use_cache=True, num_logits_to_keep=1)
        return int(torch.randint(0, self._backend.vocab, (1,),
                                 generator=self._generator))

    def prefill(self) -> int:
        ids = torch.randint(0, self._backend.vocab, (1, self._prompt),
                            generator=self._generator)
        return self._forward(ids.to(self._backend.device))

    def decode_one(self, token: int) -> int:
        return self._forward(torch.tensor([[token]], device=self._backend.device))

    def close(self):
        self._cache = None

"""What an OpenAI-style request body asks of GPU memory.

Turns the JSON body of POST /v1/completions or /v1/chat/completions into the
batch kvgated admits: one (prompt_tokens, max_new_tokens) pair per sequence
the engine will run. The rules are kvgate's (docs/design.md, "OpenAI
requests") and the same as the Envoy ext_proc gate's
(plugin/ext_proc/openai_sizing.h); both pass tests/golden/openai_sizing.json.

- Prompt tokens: a trusted count when the caller has one (the request's
  total, shared evenly across its prompts, rounded up), else the token ids
  in the body, else ceil(UTF-8 bytes / bytes_per_token), plus 5 template
  tokens per chat message. Chat counts each message's role, the `text` of
  its content parts (images and audio are not counted) and its tool calls,
  and the request's tool definitions; tools and tool calls count as the bytes
  of every key and string value in them. At least 1 per prompt.
- Max new tokens: max_completion_tokens, else max_tokens; when neither is
  set, the configured default (then written into the forwarded body as
  max_tokens), else the engine's rule: max_model_len - prompt for chat
  (vLLM), 16 for legacy completions.
- Prompt + max new tokens over max_model_len: BadRequest (a 400), as the
  engine answers.
"""

import dataclasses
import json
import math
import re
from typing import Any, List, Optional, Tuple

# kvgate.v1.Sequence fields are uint32.
_UINT32_MAX = 2**32 - 1

# Tokens a chat template adds around each message (role markers, separators).
# Llama 3's template spends 4-5 per message (<|start_header_id|>role
# <|end_header_id|>\n\n ... <|eot_id|>); ChatML (Qwen) spends 5.
CHAT_TOKENS_PER_MESSAGE = 5

# max_tokens of a legacy completion that sets none: the OpenAI API's default,
# which vLLM follows.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

# The ext_proc gate's bounds (plugin/ext_proc/openai_request.h).
_MAX_N = 128
_MAX_PROMPTS = 4096
_MAX_SEQUENCES = 4096
_MAX_DEPTH = 64

# A token count as the ext_proc gate reads it (absl::SimpleAtoi on a uint32).
_TOKEN_COUNT = re.compile(r"\s*\+?[0-9]+\s*")


class BadRequest(ValueError):
    """The body cannot be served as sent (an HTTP 400); message says why."""

    def __init__(self, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.param = param


class SizingError(RuntimeError):
    """The middleware's settings cannot size the request (an HTTP 500)."""


@dataclasses.dataclass(frozen=True)
class Shape:
    """The Admit call a request makes."""

    model: str
    # One (prompt_tokens, max_new_tokens) pair per sequence.
    sequences: List[Tuple[int, int]]
    # The max_tokens to write into the forwarded body (the configured
    # default applied); None: forward the body unchanged.
    written_max_tokens: Optional[int] = None


def parse_token_count(value: str, header: str) -> int:
    """A trusted token-count header's value; raises BadRequest."""
    if not _TOKEN_COUNT.fullmatch(value) or int(value) > _UINT32_MAX:
        raise BadRequest(f"{header}: must be a token count")
    return int(value)


def parse(path: str, body: bytes, *, bytes_per_token: float,
          max_model_len: int = 0, default_max_tokens: int = 0,
          prompt_tokens: Optional[int] = None) -> Shape:
    """The batch a request body asks for.

    ``path`` selects the endpoint: a path ending in "/chat/completions" reads
    ``messages``, any other ``prompt``. ``max_model_len`` 0 means unknown (no
    length check; a chat request without a max then needs
    ``default_max_tokens``). ``prompt_tokens``, when given, is the caller's
    trusted count for all the request's prompts together. Raises BadRequest
    when the body is not a request of the endpoint's shape or is longer than
    max_model_len, SizingError when max_model_len is needed and unknown.
    """
    request = _load(body)
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string", "model")

    chat = path.rstrip("/").endswith("/chat/completions")
    max_new = _max_tokens(request)
    samples = _count(request, "n", 1, _MAX_N)
    if samples < 1:
        raise BadRequest("'n' must be at least 1", "n")

    prompts = _chat_prompt(request) if chat else _completion_prompts(request)
    if len(prompts) * samples > _MAX_SEQUENCES:
        raise BadRequest(f"n x prompts: {len(prompts) * samples} sequences "
                         f"exceed the limit of {_MAX_SEQUENCES}")
    written = None
    if max_new is None and default_max_tokens > 0:
        written = max_new = default_max_tokens
    engine_rule = max_new is None and chat
    if engine_rule and max_model_len <= 0:
        raise SizingError(
            "the model's max_model_len is not known, so a chat request without "
            "max_tokens cannot be sized: set KVGATE_MAX_MODEL_LEN or "
            "KVGATE_DEFAULT_MAX_TOKENS")

    sequences = []
    for prompt in prompts:
        tokens = _prompt_tokens(prompt, len(prompts), bytes_per_token,
                                prompt_tokens)
        if engine_rule:
            if tokens >= max_model_len:
                raise _too_long(max_model_len, tokens, 1)
            seq_max = max_model_len - tokens
        elif max_new is None:
            seq_max = COMPLETIONS_DEFAULT_MAX_TOKENS
        else:
            seq_max = max_new
        if max_model_len > 0 and tokens + seq_max > max_model_len:
            raise _too_long(max_model_len, tokens, seq_max)
        sequences.extend([(_clamp(tokens), _clamp(seq_max))] * samples)
    return Shape(model=model, sequences=sequences, written_max_tokens=written)


def with_max_tokens(body: bytes, max_tokens: int) -> bytes:
    """``body`` (a JSON object parse() accepted) with max_tokens set, every
    other field kept in its order."""
    request = json.loads(body)
    request["max_tokens"] = max_tokens
    # ASCII escapes: a lone surrogate in a string cannot break the encoding.
    return json.dumps(request, separators=(",", ":")).encode("ascii")


@dataclasses.dataclass(frozen=True)
class _Prompt:
    text_bytes: int = 0
    template_tokens: int = 0
    token_ids: Optional[int] = None


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _load(body: bytes):
    try:
        request = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest(f"request body nests JSON deeper than {_MAX_DEPTH} "
                         "levels") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(request, dict):
        raise BadRequest("request body must be a JSON object")
    if _depth(request) > _MAX_DEPTH:
        raise BadRequest(f"request body nests JSON deeper than {_MAX_DEPTH} levels")
    return request


def _depth(value) -> int:
    deepest, level = 0, [value]
    while level:
        deepest += 1
        level = [c for v in level if isinstance(v, (dict, list))
                 for c in (v.values() if isinstance(v, dict) else v)
                 if isinstance(c, (dict, list))]
    return deepest


def _max_tokens(request) -> Optional[int]:
    """max_completion_tokens, else max_tokens; both checked when present."""
    values = {}
    for name in ("max_completion_tokens", "max_tokens"):
        value = _count(request, name, None, _UINT32_MAX)
        if value is not None and value < 1:
            raise BadRequest(f"'{name}' must be at least 1", name)
        values[name] = value
    if values["max_completion_tokens"] is not None:
        return values["max_completion_tokens"]
    return values["max_tokens"]


def _count(request, name, default, limit):
    value = request.get(name)
    if value is None:
        return default
    if not _is_int(value) or value < 0:
        raise BadRequest(f"'{name}' must be a non-negative integer", name)
    if value > limit:
        raise BadRequest(f"'{name}': {value} exceeds the limit of {limit}", name)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _prompt_tokens(prompt: _Prompt, prompts: int, bytes_per_token: float,
                   trusted: Optional[int]) -> int:
    if trusted is not None:
        tokens = -(-trusted // prompts)
    elif prompt.token_ids is not None:
        tokens = prompt.token_ids
    else:
        tokens = (math.ceil(prompt.text_bytes / bytes_per_token)
                  + prompt.template_tokens)
    return max(tokens, 1)


def _too_long(max_model_len, prompt, max_new):
    # vLLM's words, so clients see one message whoever refuses them.
    return BadRequest(
        f"This model's maximum context length is {max_model_len} tokens. "
        f"However, you requested {prompt + max_new} tokens ({prompt} in the "
        f"prompt, {max_new} in the completion). Please reduce the prompt or "
        "max_tokens.")


def _utf8(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _string_bytes(value) -> int:
    """Bytes of every key and string value: tool definitions and tool calls,
    which chat templates render into the prompt."""
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, dict):
        return sum(_utf8(k) + _string_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_string_bytes(v) for v in value)
    return 0


def _chat_prompt(request) -> List[_Prompt]:
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    text_bytes = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}]: must be an object", "messages")
        role = message.get("role")
        if isinstance(role, str):
            text_bytes += _utf8(role)
        if "tool_calls" in message:
            text_bytes += _string_bytes(message["tool_calls"])
        text_bytes += _content_bytes(message.get("content"), i)
    if "tools" in request:
        text_bytes += _string_bytes(request["tools"])
    return [_Prompt(text_bytes=text_bytes,
                    template_tokens=CHAT_TOKENS_PER_MESSAGE * len(messages))]


def _content_bytes(content, index) -> int:
    """Bytes of a message's text: a string, or the `text` of each part
    (images and audio are not counted)."""
    if content is None:
        return 0
    if isinstance(content, str):
        return _utf8(content)
    if not isinstance(content, list):
        raise BadRequest(f"messages[{index}].content: must be a string or a "
                         "list of parts", "messages")
    total = 0
    for part in content:
        if not isinstance(part, dict):
            raise BadRequest(f"messages[{index}].content: each part must be an "
                             "object", "messages")
        if isinstance(part.get("text"), str):
            total += _utf8(part["text"])
    return total


def _is_token_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_int(t) for t in value)


def _completion_prompts(request) -> List[_Prompt]:
    """Each prompt: a string, token ids, or an array of either."""
    prompt = request.get("prompt")
    if prompt is None:
        raise BadRequest("'prompt' is required", "prompt")
    if isinstance(prompt, str):
        return [_Prompt(text_bytes=_utf8(prompt))]
    if _is_token_ids(prompt):
        return [_Prompt(token_ids=len(prompt))]
    if not isinstance(prompt, list) or not prompt:
        raise BadRequest("'prompt' must be a string, a list of strings, a list "
                         "of token ids or a list of token-id lists", "prompt")
    if len(prompt) > _MAX_PROMPTS:
        raise BadRequest(f"'prompt': {len(prompt)} prompts exceed the limit of "
                         f"{_MAX_PROMPTS}", "prompt")
    prompts = []
    for i, item in enumerate(prompt):
        if isinstance(item, str):
            prompts.append(_Prompt(text_bytes=_utf8(item)))
        elif _is_token_ids(item):
            prompts.append(_Prompt(token_ids=len(item)))
        else:
            raise BadRequest(f"prompt[{i}]: must be a string or a non-empty list "
                             "of token ids", "prompt")
    return prompts


def _clamp(tokens: int) -> int:
    return min(max(int(tokens), 1), _UINT32_MAX)

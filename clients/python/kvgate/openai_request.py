"""What an OpenAI-style request body asks of GPU memory.

Turns the JSON body of POST /v1/completions or /v1/chat/completions into the
batch kvgated admits: one (prompt_tokens, max_new_tokens) pair per sequence
the engine will run. Prompt tokens come from a caller-supplied count when
there is one, else from the token ids in the body, else from the text's UTF-8
size divided by a bytes-per-token ratio.
"""

import dataclasses
import json
import math
from typing import Any, List, Optional, Tuple

# kvgate.v1.Sequence fields are uint32.
_UINT32_MAX = 2**32 - 1

# Tokens a chat template adds around each message (role markers, separators).
# Llama 3's template spends 4-5 per message (<|start_header_id|>role
# <|end_header_id|>\n\n ... <|eot_id|>); ChatML (Qwen) spends 5.
_CHAT_TOKENS_PER_MESSAGE = 5


class BadRequest(ValueError):
    """The body cannot be read as the endpoint's request; message says why."""

    def __init__(self, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.param = param


@dataclasses.dataclass(frozen=True)
class Shape:
    """The Admit call a request makes."""

    model: str
    # One (prompt_tokens, max_new_tokens) pair per sequence.
    sequences: List[Tuple[int, int]]


def parse(path: str, body: bytes, *, default_max_tokens: int,
          bytes_per_token: float, prompt_tokens: Optional[int] = None) -> Shape:
    """The batch a request body asks for.

    ``path`` selects the endpoint: a path ending in "/chat/completions" reads
    ``messages``, any other ``prompt``. ``prompt_tokens``, when given, is the
    caller's exact count for each prompt. Raises BadRequest when the body is
    not a JSON object of the endpoint's shape.
    """
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(request, dict):
        raise BadRequest("request body must be a JSON object")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string", "model")

    chat = path.rstrip("/").endswith("/chat/completions")
    max_new = _max_new_tokens(request, chat, default_max_tokens)
    samples = _positive_int(request, "n", 1)
    if not chat:
        # vLLM generates best_of sequences and returns the n best.
        samples = max(samples, _positive_int(request, "best_of", 1))

    if prompt_tokens is not None:
        prompts = [prompt_tokens] * (1 if chat else _prompt_count(request))
    elif chat:
        prompts = [_chat_tokens(request, bytes_per_token)]
    else:
        prompts = _completion_tokens(request, bytes_per_token)
    sequences = [(_clamp(p), _clamp(max_new))
                 for p in prompts for _ in range(samples)]
    return Shape(model=model, sequences=sequences)


def _max_new_tokens(request, chat, default):
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    for name in names:
        value = request.get(name)
        if value is not None:
            if not _is_int(value) or value < 1:
                raise BadRequest(f"'{name}' must be a positive integer", name)
            return value
    return default


def _positive_int(request, name, default):
    value = request.get(name)
    if value is None:
        return default
    if not _is_int(value) or value < 1:
        raise BadRequest(f"'{name}' must be a positive integer", name)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text_tokens(text: str, bytes_per_token: float) -> int:
    return math.ceil(len(text.encode("utf-8")) / bytes_per_token)


def _chat_tokens(request, bytes_per_token) -> int:
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    total = 0
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("each message must be an object", "messages")
        total += _CHAT_TOKENS_PER_MESSAGE
        total += _text_tokens(str(message.get("role", "")), bytes_per_token)
        total += _text_tokens(_content_text(message.get("content")), bytes_per_token)
        if message.get("tool_calls"):
            total += _text_tokens(json.dumps(message["tool_calls"]), bytes_per_token)
    if request.get("tools"):
        # Templates render tool schemas into the prompt.
        total += _text_tokens(json.dumps(request["tools"]), bytes_per_token)
    return max(total, 1)


def _content_text(content) -> str:
    """The text of a message's content: a string or an array of parts.

    Only text parts count; images and audio are not estimated.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content
                       if isinstance(part, dict) and part.get("type") == "text"
                       and isinstance(part.get("text", ""), str))
    raise BadRequest("message 'content' must be a string or an array", "messages")


def _prompt_count(request) -> int:
    prompt = request.get("prompt")
    if isinstance(prompt, list) and prompt and not _is_int(prompt[0]):
        return len(prompt)
    return 1


def _completion_tokens(request, bytes_per_token) -> List[int]:
    """Tokens of each prompt: a string, token ids, or an array of either."""
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        return [max(_text_tokens(prompt, bytes_per_token), 1)]
    if isinstance(prompt, list) and prompt:
        if all(_is_int(t) for t in prompt):
            return [len(prompt)]
        counts = []
        for item in prompt:
            if isinstance(item, str):
                counts.append(max(_text_tokens(item, bytes_per_token), 1))
            elif isinstance(item, list) and item and all(_is_int(t) for t in item):
                counts.append(len(item))
            else:
                raise BadRequest("'prompt' must be a string, token ids, or an "
                                 "array of either", "prompt")
        return counts
    raise BadRequest("'prompt' must be a non-empty string or array", "prompt")


def _clamp(tokens: int) -> int:
    return min(max(int(tokens), 1), _UINT32_MAX)

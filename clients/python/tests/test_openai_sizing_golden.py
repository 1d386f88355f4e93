"""The shared golden corpus of OpenAI request sizing, through the middleware.

tests/golden/openai_sizing.json is also run whole through the Envoy ext_proc
gate (tests/plugin/ext_proc/openai_sizing_golden_test.cc): both must give
its answers, so the middleware and ext_proc reserve the same memory for the
same request. The path is relative to this file, so a plain clone finds it.
"""

import json
import pathlib

import pytest

from kvgate import openai_request
from kvgate.settings import Settings
from kvgate.vllm import KvgateMiddleware

CORPUS = pathlib.Path(__file__).resolve().parents[3] / "tests/golden/openai_sizing.json"
CASES = json.loads(CORPUS.read_text(encoding="utf-8"))["cases"]


def answer(case):
    """The middleware's answer to a case, in the corpus' terms, and the body
    it forwards."""
    s = case["settings"]
    settings = Settings(max_model_len=s["max_model_len"],
                        default_max_tokens=s["default_max_tokens"],
                        bytes_per_token=s["bytes_per_token"],
                        trust_token_count_header=s["trust_token_count_header"])
    path = ("/v1/chat/completions" if case["endpoint"] == "chat"
            else "/v1/completions")
    headers = []
    if "token_count_header" in case:
        headers.append((settings.token_count_header.encode(),
                        case["token_count_header"].encode()))
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    body = json.dumps(case["body"]).encode()
    try:
        shape, _, _ = KvgateMiddleware(app=None, settings=settings)._shape(scope, body)
    except openai_request.BadRequest:
        return {"status": 400}, None
    except openai_request.SizingError:
        return {"status": 500}, None
    forwarded = None
    if shape.written_max_tokens is not None:
        forwarded = openai_request.with_max_tokens(body, shape.written_max_tokens)
    return {"sequences": [{"prompt_tokens": p, "max_new_tokens": m}
                          for p, m in shape.sequences],
            "max_tokens_written": shape.written_max_tokens}, forwarded


def test_corpus_covers_the_rules():
    assert len(CASES) >= 20
    assert len({c["name"] for c in CASES}) == len(CASES)
    assert {c["endpoint"] for c in CASES} == {"chat", "completions"}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_middleware_sizes_like_the_corpus(case):
    got, forwarded = answer(case)
    assert got == case["expect"]
    if forwarded is not None:
        # Every other field kept; only max_tokens set.
        expected = dict(case["body"], max_tokens=case["expect"]["max_tokens_written"])
        assert json.loads(forwarded) == expected

"""How request bodies and environment variables become Admit calls."""

import json

import pytest

from kvgate.openai_request import (BadRequest, SizingError, parse, parse_token_count,
                                   with_max_tokens)
from kvgate.settings import Settings


def shape(path, body, prompt_tokens=None, default_max_tokens=0, bytes_per_token=4,
          max_model_len=4096):
    return parse(path, json.dumps(body).encode(), default_max_tokens=default_max_tokens,
                 bytes_per_token=bytes_per_token, prompt_tokens=prompt_tokens,
                 max_model_len=max_model_len)


def test_completion_prompt_text_is_sized_by_bytes_per_token():
    s = shape("/v1/completions", {"model": "m", "prompt": "abcdefghi", "max_tokens": 7})
    assert (s.model, s.sequences) == ("m", [(3, 7)])


def test_utf8_bytes_not_characters_are_counted():
    s = shape("/v1/completions", {"model": "m", "prompt": "\u00e9" * 4})  # 8 bytes
    assert s.sequences == [(2, 16)]  # no max: a legacy completion's 16


def test_token_ids_count_exactly_and_prompt_arrays_are_batches():
    assert shape("/v1/completions",
                 {"model": "m", "prompt": [1, 2, 3, 4, 5]}).sequences == [(5, 16)]
    s = shape("/v1/completions",
              {"model": "m", "prompt": ["abcd", [1, 2]], "max_tokens": 9, "n": 2})
    assert s.sequences == [(1, 9), (1, 9), (2, 9), (2, 9)]


def test_chat_without_a_max_gets_the_rest_of_the_context():
    s = shape("/v1/chat/completions",
              {"model": "m", "messages": [{"role": "user", "content": "x" * 16}]},
              max_model_len=1000)
    # (4 + 16) / 4 + 5 template tokens = 10; vLLM's default: 1000 - 10.
    assert (s.sequences, s.written_max_tokens) == ([(10, 990)], None)


def test_configured_default_is_used_and_written():
    s = shape("/v1/chat/completions",
              {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
              default_max_tokens=64)
    assert (s.sequences, s.written_max_tokens) == ([(7, 64)], 64)
    body = b'{"prompt":"a","model":"m","max_tokens":null,"top_p":0.5}'
    assert with_max_tokens(body, 64) == (
        b'{"prompt":"a","model":"m","max_tokens":64,"top_p":0.5}')


def test_over_max_model_len_is_bad_request_like_the_engine():
    with pytest.raises(BadRequest, match="maximum context length is 100 tokens"):
        shape("/v1/completions", {"model": "m", "prompt": "x" * 400, "max_tokens": 1},
              max_model_len=100)


def test_chat_without_a_max_needs_a_known_context():
    with pytest.raises(SizingError, match="KVGATE_MAX_MODEL_LEN"):
        shape("/v1/chat/completions",
              {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
              max_model_len=0)


def test_token_count_header_values():
    assert parse_token_count("4294967295", "h") == 4294967295
    for bad in ("abc", "-1", "1.5", "4294967296", "1_000"):
        with pytest.raises(BadRequest, match="h: must be a token count"):
            parse_token_count(bad, "h")


def test_chat_counts_text_parts_and_template_overhead():
    body = {"model": "m", "max_completion_tokens": 10, "max_tokens": 99,
            "messages": [{"role": "system", "content": "x" * 8},
                         {"role": "user", "content": [
                             {"type": "text", "text": "y" * 12},
                             {"type": "image_url", "image_url": {"url": "data:..."}}]}]}
    # ceil((6 + 8 + 4 + 12) / 4) + 2 x 5; max_completion_tokens wins over
    # max_tokens.
    assert shape("/v1/chat/completions", body).sequences == [(18, 10)]


def test_trusted_token_count_overrides_the_estimate():
    s = shape("/v1/chat/completions",
              {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2},
              prompt_tokens=700)
    assert s.sequences == [(700, 3396), (700, 3396)]
    # A batch of prompts shares the count, rounded up.
    s = shape("/v1/completions", {"model": "m", "prompt": ["a", "b", "c"]},
              prompt_tokens=10)
    assert s.sequences == [(4, 16)] * 3


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x"}, "model"),
    ({"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"model": "m", "prompt": "x", "n": "2"}, "n"),
    ({"model": "m"}, "prompt"),
    ({"model": "m", "prompt": [[]]}, "prompt"),
])
def test_malformed_completion_names_the_field(body, param):
    with pytest.raises(BadRequest) as e:
        shape("/v1/completions", body)
    assert e.value.param == param


def test_body_must_be_a_json_object():
    for body in (b"{", b"[1]", b"\xff"):
        with pytest.raises(BadRequest):
            parse("/v1/completions", body, bytes_per_token=4)
    with pytest.raises(BadRequest):
        shape("/v1/chat/completions", {"model": "m", "messages": []})


def test_settings_defaults_and_environment():
    assert Settings.from_env({}) == Settings()
    s = Settings.from_env({"KVGATE_ADDRESS": "127.0.0.1:50051", "KVGATE_MODEL": "m",
                           "KVGATE_FAIL_OPEN": "Yes", "KVGATE_TIMEOUT_S": "4",
                           "KVGATE_TENANT_HEADER": "X-Team"})
    assert (s.address, s.model, s.fail_open, s.tenant_header) == (
        "127.0.0.1:50051", "m", True, "x-team")
    # The queue wait leaves kvgated time to answer before the gRPC deadline.
    assert s.queue_wait_s == pytest.approx(3.6)
    # Sizing: the engine's own rule and a counted prompt by default.
    assert (s.max_model_len, s.default_max_tokens, s.trust_token_count_header) == (
        0, 0, False)
    s = Settings.from_env({"KVGATE_MAX_MODEL_LEN": "8192",
                           "KVGATE_DEFAULT_MAX_TOKENS": "512",
                           "KVGATE_TRUST_TOKEN_COUNT_HEADER": "true"})
    assert (s.max_model_len, s.default_max_tokens, s.trust_token_count_header) == (
        8192, 512, True)
    assert Settings(timeout_s=30).queue_wait_s == pytest.approx(29.5)
    assert Settings(timeout_s=30, max_queue_wait_s=2).queue_wait_s == 2


@pytest.mark.parametrize("env", [
    {"KVGATE_FAIL_OPEN": "maybe"},
    {"KVGATE_TIMEOUT_S": "soon"},
    {"KVGATE_TIMEOUT_S": "0"},
    {"KVGATE_BYTES_PER_TOKEN": "-1"},
    {"KVGATE_DEFAULT_MAX_TOKENS": "1.5"},
    {"KVGATE_MAX_MODEL_LEN": "-1"},
    {"KVGATE_TRUST_TOKEN_COUNT_HEADER": "sometimes"},
])
def test_bad_settings_name_the_variable(env):
    with pytest.raises(ValueError, match=next(iter(env))):
        Settings.from_env(env)

"""How request bodies and environment variables become Admit calls."""

import json

import pytest

from kvgate.openai_request import BadRequest, parse
from kvgate.settings import Settings


def shape(path, body, prompt_tokens=None, default_max_tokens=256, bytes_per_token=4):
    return parse(path, json.dumps(body).encode(), default_max_tokens=default_max_tokens,
                 bytes_per_token=bytes_per_token, prompt_tokens=prompt_tokens)


def test_completion_prompt_text_is_sized_by_bytes_per_token():
    s = shape("/v1/completions", {"model": "m", "prompt": "abcdefghi", "max_tokens": 7})
    assert (s.model, s.sequences) == ("m", [(3, 7)])


def test_utf8_bytes_not_characters_are_counted():
    s = shape("/v1/completions", {"model": "m", "prompt": "\u00e9" * 4})  # 8 bytes
    assert s.sequences == [(2, 256)]


def test_token_ids_count_exactly_and_prompt_arrays_are_batches():
    assert shape("/v1/completions",
                 {"model": "m", "prompt": [1, 2, 3, 4, 5]}).sequences == [(5, 256)]
    s = shape("/v1/completions",
              {"model": "m", "prompt": ["abcd", [1, 2]], "max_tokens": 9, "n": 2})
    assert s.sequences == [(1, 9), (1, 9), (2, 9), (2, 9)]


def test_best_of_above_n_sets_the_sequence_count():
    s = shape("/v1/completions", {"model": "m", "prompt": [1], "n": 1, "best_of": 3})
    assert len(s.sequences) == 3


def test_chat_counts_text_parts_and_template_overhead():
    body = {"model": "m", "max_completion_tokens": 10, "max_tokens": 99,
            "messages": [{"role": "system", "content": "x" * 8},
                         {"role": "user", "content": [
                             {"type": "text", "text": "y" * 12},
                             {"type": "image_url", "image_url": {"url": "data:..."}}]}]}
    # (5 + 2 + 2) + (5 + 1 + 3); max_completion_tokens wins over max_tokens.
    assert shape("/v1/chat/completions", body).sequences == [(18, 10)]


def test_token_count_header_overrides_the_estimate():
    s = shape("/v1/chat/completions",
              {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2},
              prompt_tokens=700)
    assert s.sequences == [(700, 256), (700, 256)]


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
            parse("/v1/completions", body, default_max_tokens=1, bytes_per_token=4)
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
    assert Settings(timeout_s=30).queue_wait_s == pytest.approx(29.5)
    assert Settings(timeout_s=30, max_queue_wait_s=2).queue_wait_s == 2


@pytest.mark.parametrize("env", [
    {"KVGATE_FAIL_OPEN": "maybe"},
    {"KVGATE_TIMEOUT_S": "soon"},
    {"KVGATE_TIMEOUT_S": "0"},
    {"KVGATE_BYTES_PER_TOKEN": "-1"},
    {"KVGATE_DEFAULT_MAX_TOKENS": "1.5"},
])
def test_bad_settings_name_the_variable(env):
    with pytest.raises(ValueError, match=next(iter(env))):
        Settings.from_env(env)

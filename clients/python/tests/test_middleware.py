"""KvgateMiddleware in front of a stand-in OpenAI server, against a real kvgated.

kvgated is sized so that two test requests fit and a third waits (conftest).
Each test that uses `gated` ends by checking that kvgated has nothing
reserved or queued: no lease outlives its response.
"""

import asyncio
import time

import httpx
import pytest

from conftest import chat, completion, wait_until

QUEUED = "x-kvgate-queued-ms"


async def until(predicate, what, timeout=10.0):
    """Awaits predicate() (a coroutine function) until true, or fails."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def leases(kvgated, n):
    async def check():
        return (await asyncio.to_thread(kvgated.budget)).active_leases == n
    return check


def queued(kvgated, n):
    async def check():
        return (await asyncio.to_thread(kvgated.budget)).queued_requests == n
    return check


def error_of(response):
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "code"} <= set(body["error"]), body
    return body["error"]


def test_completion_is_admitted_and_its_lease_released(gated, kvgated):
    r = gated.post("/v1/completions", completion())
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "ok"
    assert r.headers[QUEUED] == "0"
    assert kvgated.idle()


def test_chat_completion_is_admitted_and_its_lease_released(gated, kvgated):
    r = gated.post("/v1/chat/completions", chat())
    assert r.status_code == 200, r.text
    assert kvgated.idle()


def test_requests_over_capacity_wait_then_succeed(gated, kvgated):
    async def five_at_once():
        async with gated.client() as c:
            return await asyncio.gather(*[
                c.post("/v1/completions", json=completion(hold_s=0.3))
                for _ in range(5)])

    responses = asyncio.run(five_at_once())
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    waited = [int(r.headers[QUEUED]) for r in responses]
    # Two run at once, so the other three waited in kvgated's queue.
    assert sum(w > 0 for w in waited) >= 3, waited
    stats = gated.stats()
    assert stats["requests"] == 5
    assert stats["max_in_flight"] == 2


def test_queue_timeout_answers_429_with_retry_after(servers, gated, kvgated):
    short_wait = servers["short_wait"]

    async def third_while_two_hold():
        async with gated.client() as c, short_wait.client() as s:
            holders = [asyncio.ensure_future(
                c.post("/v1/completions", json=completion(hold_s=1.0)))
                for _ in range(2)]
            await until(leases(kvgated, 2), "two leases")
            third = await s.post("/v1/completions", json=completion())
            return third, await asyncio.gather(*holders)

    third, holders = asyncio.run(third_while_two_hold())
    assert [r.status_code for r in holders] == [200, 200]
    assert third.status_code == 429, third.text
    assert int(third.headers["retry-after"]) >= 1
    assert third.headers["content-type"] == "application/json"
    error = error_of(third)
    assert error["code"] == "queue_timeout"
    assert error["type"] == "rate_limit_exceeded"
    assert "QUEUE_TIMEOUT" in error["message"]
    assert gated.stats()["requests"] == 2


def test_client_leaving_the_queue_is_dequeued(gated, kvgated):
    async def leave_while_queued():
        async with gated.client() as c:
            holders = [asyncio.ensure_future(
                c.post("/v1/completions", json=completion(hold_s=2.0)))
                for _ in range(2)]
            await until(leases(kvgated, 2), "two leases")
            waiter = asyncio.ensure_future(c.post("/v1/completions", json=completion()))
            await until(queued(kvgated, 1), "a queued request")
            waiter.cancel()
            await until(queued(kvgated, 0), "the queue to empty", timeout=1.0)
            assert (await asyncio.to_thread(kvgated.budget)).active_leases == 2
            return await asyncio.gather(*holders)

    holders = asyncio.run(leave_while_queued())
    assert [r.status_code for r in holders] == [200, 200]
    assert gated.stats()["requests"] == 2


def test_stream_holds_its_lease_until_the_last_chunk(gated, kvgated):
    async def stream():
        events, leases_mid_stream = [], None
        async with gated.client() as c:
            async with c.stream("POST", "/v1/chat/completions",
                                json=chat(stream=True, chunks=4,
                                          chunk_delay_s=0.05)) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        events.append(line[len("data: "):].strip())
                        if len(events) == 2:
                            leases_mid_stream = (
                                await asyncio.to_thread(kvgated.budget)).active_leases
        return events, leases_mid_stream

    events, leases_mid_stream = asyncio.run(stream())
    assert len(events) == 5 and events[-1] == "[DONE]"
    assert leases_mid_stream == 1
    # Released before the stream's end reached the client.
    assert kvgated.idle()


def test_response_longer_than_the_lease_ttl_keeps_its_lease(gated, kvgated):
    # 8 chunks 0.25 s apart outlive kvgated's 1 s lease TTL twice over; the
    # middleware renews every 0.2 s.
    async def long_stream():
        leases_at_end = None
        async with gated.client() as c:
            async with c.stream("POST", "/v1/chat/completions",
                                json=chat(stream=True, chunks=8,
                                          chunk_delay_s=0.25)) as r:
                async for line in r.aiter_lines():
                    if '"t7"' in line:  # the last chunk; [DONE] follows 0.25 s later
                        leases_at_end = (
                            await asyncio.to_thread(kvgated.budget)).active_leases
        return leases_at_end

    assert asyncio.run(long_stream()) == 1
    assert kvgated.idle()


def test_client_disconnect_mid_stream_releases(gated, kvgated):
    async def read_one_event_and_leave():
        async with gated.client() as c:
            async with c.stream("POST", "/v1/chat/completions",
                                json=chat(stream=True, chunks=100,
                                          chunk_delay_s=0.05)) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        break
            assert (await asyncio.to_thread(kvgated.budget)).active_leases <= 1
            await until(leases(kvgated, 0), "the lease to be released", timeout=5)

    asyncio.run(read_one_event_and_leave())


def test_upstream_failure_mid_stream_releases(gated, kvgated):
    async def stream_that_breaks():
        async with gated.client() as c:
            with pytest.raises(httpx.HTTPError):
                async with c.stream("POST", "/v1/chat/completions",
                                    json=chat(stream=True, chunks=10,
                                              fail_after=1)) as r:
                    async for _ in r.aiter_lines():
                        pass

    asyncio.run(stream_that_breaks())
    assert kvgated.idle()


def test_tenant_and_priority_headers_are_accepted(gated):
    r = httpx.Client(transport=httpx.HTTPTransport(uds=gated.uds)).post(
        "http://stand-in/v1/completions", json=completion(),
        headers={"x-kvgate-tenant": "team-a", "x-kvgate-priority": "Critical"})
    assert r.status_code == 200, r.text


def test_unknown_priority_is_400(gated):
    r = httpx.Client(transport=httpx.HTTPTransport(uds=gated.uds)).post(
        "http://stand-in/v1/completions", json=completion(),
        headers={"x-kvgate-priority": "urgent"})
    assert r.status_code == 400
    assert "x-kvgate-priority" in error_of(r)["message"]
    assert gated.stats()["requests"] == 0


def test_body_that_is_not_json_is_400(gated):
    r = httpx.Client(transport=httpx.HTTPTransport(uds=gated.uds)).post(
        "http://stand-in/v1/completions", content=b"{not json",
        headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert error_of(r)["type"] == "invalid_request_error"
    assert gated.stats()["requests"] == 0


def test_unknown_model_is_404(gated):
    r = gated.post("/v1/completions", {**completion(), "model": "no-such-model"})
    assert r.status_code == 404
    error = error_of(r)
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"


def test_prompt_beyond_context_is_400(gated):
    # gpt2's context is 1024 tokens; kvgated answers INVALID_ARGUMENT.
    r = gated.post("/v1/completions", completion(max_tokens=1000))
    assert r.status_code == 400
    assert "context length" in error_of(r)["message"]


def test_token_count_header_is_ignored_unless_trusted(gated):
    r = httpx.Client(transport=httpx.HTTPTransport(uds=gated.uds)).post(
        "http://stand-in/v1/completions", json=completion(),
        headers={"x-kvgate-prompt-tokens": "900"})
    # Counted from the body (100 tokens), not the claimed 900.
    assert r.status_code == 200, r.text


def test_trusted_token_count_header_replaces_the_estimate(servers, kvgated):
    server = servers["sizing"]
    server.reset_stats()
    r = httpx.Client(transport=httpx.HTTPTransport(uds=server.uds)).post(
        "http://stand-in/v1/completions", json=completion(),
        headers={"x-kvgate-prompt-tokens": "900"})
    # 900 + 400 exceeds KVGATE_MAX_MODEL_LEN 1024: the middleware answers.
    assert r.status_code == 400
    assert "1300" in error_of(r)["message"]
    assert server.stats()["requests"] == 0
    assert kvgated.idle()


def test_default_max_tokens_is_written_into_the_forwarded_body(servers, kvgated):
    server = servers["sizing"]
    body = completion()
    del body["max_tokens"]
    r = server.post("/v1/completions", body)
    assert r.status_code == 200, r.text
    assert r.json()["received"] == {"max_tokens": 64, "content_length_matches": True}
    # A request with its own max goes on unchanged.
    r = server.post("/v1/completions", completion())
    assert r.json()["received"]["max_tokens"] == 400
    wait_until(kvgated.idle, "kvgated to be idle")


def test_chat_without_a_max_and_no_context_length_is_500(gated):
    body = chat()
    del body["max_tokens"]
    r = gated.post("/v1/chat/completions", body)
    assert r.status_code == 500
    assert "KVGATE_MAX_MODEL_LEN" in error_of(r)["message"]
    assert gated.stats()["requests"] == 0


def test_batch_that_never_fits_is_400_without_retry_after(gated):
    r = gated.post("/v1/completions", completion(n=3))
    assert r.status_code == 400
    assert "retry-after" not in r.headers
    assert error_of(r)["code"] == "never_fits"
    assert gated.stats()["requests"] == 0


def test_other_paths_pass_through(gated):
    assert gated.get("/health").status_code == 200


def test_fail_open_forwards_when_kvgated_is_down(servers):
    server = servers["fail_open"]
    server.reset_stats()
    r = server.post("/v1/completions", completion())
    assert r.status_code == 200, r.text
    assert server.stats()["requests"] == 1


def test_fail_closed_answers_503_when_kvgated_is_down(servers):
    server = servers["fail_closed"]
    server.reset_stats()
    r = server.post("/v1/chat/completions", chat())
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) >= 1
    assert error_of(r)["code"] == "kvgate_unavailable"
    assert server.stats()["requests"] == 0
    assert server.get("/health").status_code == 200


def test_model_override_replaces_the_body_model(servers, kvgated):
    # This server runs with KVGATE_MODEL=m.
    server = servers["model_override"]
    r = server.post("/v1/completions", {**completion(), "model": "served-name"})
    assert r.status_code == 200, r.text
    assert kvgated.idle()

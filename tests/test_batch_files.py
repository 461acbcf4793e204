"""The OpenAI batch line format: request lines, result lines as the OpenAI Batch API and vLLM's
batch runner write them, and sharding at the API's limits."""

import json

import pytest

from rtune.oracle.batch_files import BadLine, ShardWriter, parse_result, request_line

KEY = "a" * 64

# written by hand from vLLM's run_batch: BatchRequestOutput.model_dump_json() (no spaces),
# a ChatCompletionResponse body with vLLM's extra fields
VLLM_OK = (
    '{"id":"vllm-5c1f0e0a9b6a4b7c","custom_id":"@KEY@","response":{"status_code":200,'
    '"request_id":"vllm-batch-0d2e7f","body":{"id":"chatcmpl-3b1","object":"chat.completion",'
    '"created":1718000000,"model":"Qwen/Qwen2.5-7B-Instruct","choices":[{"index":0,'
    '"message":{"role":"assistant","content":"[Better Answer] x [End]","refusal":null,'
    '"annotations":null,"audio":null,"function_call":null,"tool_calls":[],'
    '"reasoning_content":null},"logprobs":null,"finish_reason":"stop","stop_reason":null}],'
    '"service_tier":null,"system_fingerprint":null,"usage":{"prompt_tokens":120,'
    '"total_tokens":180,"completion_tokens":60,"prompt_tokens_details":null},'
    '"prompt_logprobs":null,"kv_transfer_params":null}},"error":null}').replace("@KEY@", KEY)
# make_error_request_output: a 400 with no body and the message as a string
VLLM_ERROR_TEXT = (
    '{"id":"vllm-77","custom_id":"@KEY@","response":{"status_code":400,'
    '"request_id":"vllm-batch-78","body":null},"error":"This model\'s maximum context length '
    'is 4096 tokens. However, you requested 5000 tokens."}').replace("@KEY@", KEY)
# an ErrorResponse from the serving layer
VLLM_ERROR_OBJECT = (
    '{"id":"vllm-79","custom_id":"@KEY@","response":{"status_code":404,'
    '"request_id":"vllm-batch-80","body":null},"error":{"error":{"message":"The model '
    '`other` does not exist.","type":"NotFoundError","param":null,"code":404}}}').replace("@KEY@", KEY)


def openai_line(**kw):
    line = {"id": "batch_req_1", "custom_id": KEY, "response": None, "error": None, **kw}
    return json.dumps(line)


def test_request_line_is_the_batch_format():
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi \u00e9"}]},
                      ensure_ascii=False)
    line = json.loads(request_line(KEY, body))
    assert line == {"custom_id": KEY, "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "m", "messages": [{"role": "user", "content": "hi é"}]}}


def test_vllm_lines():
    ok = parse_result(VLLM_OK)
    assert (ok.key, ok.text, ok.tokens_in, ok.tokens_out, ok.finish_reason, ok.model) == (
        KEY, "[Better Answer] x [End]", 120, 60, "stop", "Qwen/Qwen2.5-7B-Instruct")
    err = parse_result(VLLM_ERROR_TEXT)
    assert err.text is None and err.reason == "context_length" and not err.transient
    assert "maximum context length" in err.detail
    other = parse_result(VLLM_ERROR_OBJECT)
    assert other.reason == "http_404" and "does not exist" in other.detail


def test_openai_output_and_error_file_lines():
    body = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    ok = parse_result(openai_line(response={"status_code": 200, "request_id": "r",
                                            "body": body}))
    assert ok.text == "hi" and ok.model == "gpt-4o-mini-2024-07-18" and ok.tokens_in == 3
    expired = parse_result(openai_line(error={"code": "batch_expired", "message": "late"}))
    assert expired.reason == "expired" and expired.transient
    server = parse_result(openai_line(response={
        "status_code": 500, "request_id": "r",
        "body": {"error": {"message": "oops", "type": "server_error", "code": None}}}))
    assert server.reason == "http_500" and server.transient
    bad = parse_result(openai_line(response={
        "status_code": 400, "request_id": "r",
        "body": {"error": {"message": "Invalid 'messages'", "code": "invalid_value"}}}))
    assert bad.reason == "bad_request" and not bad.transient
    empty = parse_result(openai_line(response={"status_code": 200, "request_id": "r",
                                               "body": {"choices": []}}))
    assert empty.reason == "bad_response" and empty.transient


@pytest.mark.parametrize("raw, message", [
    (VLLM_OK[:-40], "not a JSON line"),  # cut short (a node died while writing)
    ('{"id": "x", "response": null, "error": null}', "no custom_id"),
    ("[1, 2]", "not a JSON object"),
    ('{"custom_id": "k", "response": "nope"}', "'response' is not an object"),
])
def test_unreadable_lines_say_what_is_wrong(raw, message):
    with pytest.raises(BadLine, match=message):
        parse_result(raw)


def test_shards_split_at_the_line_and_byte_limits(tmp_path):
    writer = ShardWriter(tmp_path / "r", per_file=4, max_lines=3, max_bytes=10_000)
    for i in range(7):
        writer.write(request_line(f"{i:064d}", "{}"))
    shards = writer.close()
    assert [s.lines for s in shards] == [3, 3, 1]  # per_file capped at max_lines
    assert [s.path.name for s in shards] == ["00000.jsonl", "00001.jsonl", "00002.jsonl"]
    assert not list((tmp_path / "r").glob("*.part"))
    line = request_line("0" * 64, "{}")
    writer = ShardWriter(tmp_path / "b", per_file=100, max_bytes=2 * len(line) + 1)
    for _ in range(5):
        writer.write(line)
    assert [s.lines for s in writer.close()] == [2, 2, 1]
    assert all(s.path.stat().st_size <= 2 * len(line) + 1 for s in writer.shards)

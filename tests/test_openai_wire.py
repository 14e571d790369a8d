"""The openai backend sends exactly the body `chat.completions.create` would, through `client.post`.

`flexjudge.backends._retry` skips `create`'s parameter transform (a CPU cost per request that grows with
the response schema); this holds it to the same bytes on the wire, auth header included, for a real
judge request (schema response format, images, template options in `extra_body`).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from openai import AsyncOpenAI

from flexjudge.backends._retry import complete
from flexjudge.constraints import pair_constraint
from flexjudge.prompting import PromptSpec, render_prompt

_ANSWER = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
}


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            seen.append(
                {"path": self.path, "auth": self.headers.get("authorization"), "body": json.loads(body)}
            )
            out = json.dumps(_ANSWER).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1", seen
    server.shutdown()
    server.server_close()


def test_the_body_on_the_wire_is_what_create_sends(recorder: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = recorder
    image = "data:image/png;base64,iVBORw0KGgo="
    body = {
        "model": "judge",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image}},
                    {"type": "image_url", "image_url": {"url": image}},
                    {"type": "text", "text": render_prompt(PromptSpec(), "a red fox")},
                ],
            }
        ],
        "max_tokens": 4096,
        "temperature": 0.0,
        "top_p": 1.0,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "judgment", "schema": pair_constraint("image", "flex"), "strict": True},
        },
        "extra_body": {"chat_template_kwargs": {"enable_thinking": False}},
    }

    async def both() -> None:
        client = AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0)
        answer = await complete(client, body, url=url, attempts=1, backoff_s=0.0)
        assert answer.choices[0].message.content == "ok"
        await client.chat.completions.create(**body)
        await client.close()

    asyncio.run(both())
    ours, reference = seen
    assert ours == reference
    assert ours["auth"] == "Bearer sk-test" and ours["path"] == "/v1/chat/completions"
    assert ours["body"]["chat_template_kwargs"] == {"enable_thinking": False}

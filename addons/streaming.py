"""The stream owner: the one callable mitmproxy hands a streamed response body to.

mitmproxy allows one `flow.response.stream` callable per message, so translation and
observation compose here: the provider's translator turns upstream bytes into what the
client gets, and the owner stamps the time of the first token. It never raises and
never blocks; it returns `[]` (not `b""`) when it holds data back, since `b""` would
end an HTTP/1.1 chunked body early.
"""

from __future__ import annotations

import logging

from addons.calls import Call, now
from providers import sse
from providers.base import ProviderError, StreamTranslator

log = logging.getLogger(__name__)


class StreamOwner:
    __slots__ = ("call", "translator", "passthrough")

    def __init__(self, call: Call, translator: StreamTranslator, passthrough: bool = False) -> None:
        self.call = call
        self.translator = translator
        # Pass the upstream's bytes unchanged and only observe them (preserve routes).
        self.passthrough = passthrough

    def __call__(self, data: bytes) -> list[bytes]:
        call = self.call
        try:
            if data:
                out = self.translator.feed(data)
                if call.first_token is None and self.translator.started:
                    call.first_token = now()
                if self.passthrough:
                    out = [data]
            else:
                out = self.translator.finish(call.stream_error)
                # an error the upstream reported inside the stream (an error event, a
                # truncated or corrupt stream) makes the call failed, as a status would
                if self.translator.error is not None:
                    call.fail(self.translator.error, "upstream")
                if self.passthrough:
                    out = []
            for keep in call.stream_filters:  # policies rewriting what the client gets
                out = keep(out, not data)
            for chunk in out:
                call.bytes_out += len(chunk)
            return out
        except Exception:  # a translator bug must not take the client's stream down
            log.exception("llmitm: stream translation failed")
            if data:
                return [data] if self.passthrough else []
            err = ProviderError(502, "the gateway could not translate the upstream stream")
            call.fail(err, "gateway")
            return [] if self.passthrough else [sse.encode(err.to_openai()), sse.DONE]

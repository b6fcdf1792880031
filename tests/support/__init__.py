"""Helpers the tests share, and that bench/ may use too: never a test module.

server_process (the server as its own process), databases (throwaway databases and Redis prefixes),
operator_helpers, speech_helpers, tcp_proxy and fuzz_frames.
"""

__all__: list[str] = []

"""Voice calls: Twilio Media Streams and the native PCM route, on top of chat sessions.

- call: One live call, whatever its route: caller audio in, turns through the chat session,
  speech out.
- models: The speech side every call shares: VAD, recognizer, speech featurizer and synthesizer.
- native: The `/voice` route: one NativeConnection per call, JSON control frames and binary
  audio.
- protocol: The voice routes' wire protocols: pure parsing and serialization, no I/O.
- service: The voice calls' shared state: VoiceService, and what both routes' connections share.
- speaker: A call's voice: reply text in, synthesized audio out as paced 20 ms frames, with
  barge-in.
- synthesis: Spoken replies: a pluggable text-to-speech engine and 20 ms telephony framing.
- twilio: The `/voice/twilio` route: one TwilioConnection per Twilio Media Stream.
- twilio_signature: Twilio's `X-Twilio-Signature` on a stream's upgrade: the signed URL and the
  check, pure.
- turns: When a caller has finished speaking: the turn-taking policy of calls, pure (no I/O).

Other rooms import from these modules by name; nothing is re-exported here.
"""

__all__: list[str] = []

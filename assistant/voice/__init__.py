"""Voice calls: the Twilio and native routes, one call's audio in and speech out, synthesis."""

__all__: list[str] = []

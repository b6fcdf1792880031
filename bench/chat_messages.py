"""The chat benchmarks' customer messages."""

from __future__ import annotations

__all__ = ["MESSAGES", "STEADY_MESSAGES"]

# Realistic, varied widget messages (short and long, questions and complaints, one with a
# card number so that redaction does real work): banking questions the assistant handles
# itself, since a message that asks for a person or that the models cannot place would hand
# the session to an operator and end the bot's replies. The flag marks the ones a session
# can send again and again, for hundreds of turns, without a run of low-confidence intents
# or angry emotions handing it over (bench/load.py sends only those).
_CATALOGUE: tuple[tuple[str, bool], ...] = (
    ("Hi, my new card still hasn't arrived, it was supposed to come yesterday.", True),
    ("I was charged twice for the same purchase, can you refund one of them?", True),
    ("How do I change my PIN?", True),
    ("My card payment keeps failing at checkout even though I have enough money.", True),
    ("How long does a transfer to another bank take?", True),
    ("I want to close my account.", False),
    ("My card is damaged, the chip stopped working.", True),
    ("Can I use my card abroad, in Canada for example?", True),
    ("Why was my transfer declined? I only tried to send 50 euros.", True),
    ("What fees do you charge for withdrawing cash at an ATM?", True),
    ("How do I top up my account with a bank transfer?", True),
    ("The ATM kept my card, what should I do?", True),
    ("What exchange rate do you use when I pay in dollars?", True),
    ("Can I get a virtual card for shopping online?", True),
    ("My top-up by card failed, why?", False),
    ("The transfer I sent three days ago is still pending.", True),
    ("How do I verify my identity in the app?", True),
    ("How can I add money to my account using Apple Pay?", False),
    ("I think someone used my card, I don't recognise a payment of 89.99 from last night.", False),
    ("My card number is 4111 1111 1111 1111, why was it declined?", False),
    ("Is there a limit on how much I can top up?", False),
    ("I forgot my passcode and can't log in.", False),
    ("Can I change the currency of my account?", False),
    ("I returned the shoes two weeks ago and the refund still hasn't reached my account.", False),
    ("How do I activate my card?", True),
    ("Where can I see the details of my card, like the expiry date?", False),
    ("I got less money than expected from the ATM.", False),
    ("How do I freeze my card after losing it?", True),
    ("Why is there an extra charge on my statement for a card payment?", False),
    ("The exchange rate you used for my refund looks wrong, I got less than I paid.", False),
)
MESSAGES: tuple[str, ...] = tuple(text for text, _ in _CATALOGUE)
STEADY_MESSAGES: tuple[str, ...] = tuple(text for text, steady in _CATALOGUE if steady)

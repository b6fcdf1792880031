"""The chat benchmarks' customer messages."""

from __future__ import annotations

__all__ = ["MESSAGES"]

# Realistic, varied widget messages (short and long, questions and complaints, one with a
# card number so that redaction does real work).
# Banking questions the assistant handles itself: a message that asks for a person or that
# the models cannot place would hand the session to an operator and end the bot's replies.
MESSAGES: tuple[str, ...] = (
    "Hi, my new card still hasn't arrived, it was supposed to come yesterday.",
    "I was charged twice for the same purchase, can you refund one of them?",
    "How do I change my PIN?",
    "My card payment keeps failing at checkout even though I have enough money.",
    "How long does a transfer to another bank take?",
    "I want to close my account.",
    "My card is damaged, the chip stopped working.",
    "Can I use my card abroad, in Canada for example?",
    "Why was my transfer declined? I only tried to send 50 euros.",
    "What fees do you charge for withdrawing cash at an ATM?",
    "How do I top up my account with a bank transfer?",
    "The ATM kept my card, what should I do?",
    "What exchange rate do you use when I pay in dollars?",
    "Can I get a virtual card for shopping online?",
    "My top-up by card failed, why?",
    "The transfer I sent three days ago is still pending.",
    "How do I verify my identity in the app?",
    "How can I add money to my account using Apple Pay?",
    "I think someone used my card, I don't recognise a payment of 89.99 from last night.",
    "My card number is 4111 1111 1111 1111, why was it declined?",
    "Is there a limit on how much I can top up?",
    "I forgot my passcode and can't log in.",
    "Can I change the currency of my account?",
    "I returned the shoes two weeks ago and the refund still hasn't reached my account.",
    "How do I activate my card?",
    "Where can I see the details of my card, like the expiry date?",
    "I got less money than expected from the ATM.",
    "How do I freeze my card after losing it?",
    "Why is there an extra charge on my statement for a card payment?",
    "The exchange rate you used for my refund looks wrong, I got less than I paid.",
)

"""Text out as tokens come: decoded deltas that concatenate to the whole text, and stop strings.

    delta = TextDelta(tokenizer)
    piece = delta.feed(new_ids)      # the text the new tokens add ('' while a character is incomplete)
    rest = delta.flush()             # what is left at the end

    stops = StopText(["\\n\\n"])
    out, hit = stops.feed(piece)     # the text that is safe to send, and whether a stop string ended it
    out += stops.flush()             # at the end (no stop hit): the held-back tail

A piece is the decoded text of all tokens so far minus what was already handed out, so the pieces
concatenate to the decoding of the whole sequence (held back while the text ends in an incomplete
UTF-8 character, U+FFFD). StopText holds back a tail that could be the start of a stop string, so
no stop string (or part of one) is ever sent.
"""

from __future__ import annotations

from typing import Sequence


class TextDelta:
    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def feed(self, ids: Sequence[int]) -> str:
        self.ids += list(ids)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""  # an incomplete character (or a re-spaced tail): wait for more tokens
        piece, self.sent = text[len(self.sent):], text
        return piece

    def flush(self) -> str:
        text = self.tok.decode(self.ids)
        piece = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent += piece
        return piece


class StopText:
    """Cuts the text at the first stop string (not included), holding back possible starts of one."""

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False

    def feed(self, piece: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        text = self.held + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held, self.stopped = "", True
            return text[:cut], True
        keep = 0  # the longest tail that a stop string starts with
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        self.held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        return out

"""What one request may ask of the server.

The limits keep one client from taking the machine: a generation stream's length, the text a
request may bring, the streams open at once and a request body's size. Every request over a limit
is refused before any model work, with a 4xx and ``{"error": ...}`` naming the limit.
"""

from dataclasses import dataclass


@dataclass
class Limits:
    """What one request may ask for."""

    max_chars: int = 2000  # characters per generation stream
    max_text: int = 20000  # characters of a prefix, a scored text or an activations text
    max_streams: int = 16  # generation streams at once
    max_body: int = 1 << 20  # bytes of a request body

"""The identity-registry port: does (number, full name, date of birth) name a real person? (P5)

The number is of one of two kinds (`RegistryQuery.id_type`): a citizen's 12-digit personal
identification number, or a foreigner's identification number in the e-ID system (R9). The
kind travels with the query, and an adapter must send it: the same digits may be a citizen's
number and a foreigner's, naming two people.

Electronic authentication means matching an identity against the National Population
Database through the e-identification system (DOMAIN A); a structural check of the number
is not enough. This module is the port; the adapters are `SandboxRegistry` (synthetic
citizens for development and tests) and `HttpRegistry` (a licensed e-ID provider).

Two answers only. An unknown number and a known number whose name or date of birth differ
are BOTH `NO_MATCH`, so the registry cannot be used as an oracle to learn which numbers
exist. A source's definite refusal of the query itself (the provider's HTTP 4xx) is a
`NO_MATCH` too, never an outage one user could repeat to trip the breaker for all.
Anything that prevents an answer (network, timeout, a malformed reply, an open
circuit breaker) raises `RegistryUnavailableError`; the service maps it to the
`REGISTRY_UNAVAILABLE` reason. No adapter may put the number, the name or the date of
birth in a log line or an error message (P9).
"""

from __future__ import annotations

import datetime
import enum
import unicodedata
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "IdentityRegistry",
    "RegistryAnswer",
    "RegistryQuery",
    "RegistryUnavailableError",
    "clean_name",
    "normalize_name",
]


class RegistryAnswer(enum.StrEnum):
    """The registry's verdict; `NO_MATCH` also covers "no such number" (no oracle)."""

    MATCH = "match"
    NO_MATCH = "no_match"


class RegistryUnavailableError(Exception):
    """The registry gave no usable answer. The message never carries personal data."""


@dataclass(frozen=True, slots=True, repr=False)
class RegistryQuery:
    """What is matched: a structurally valid number of kind `id_type` ("citizen" or
    "foreigner"), the full name and the date of birth."""

    number: str
    full_name: str
    date_of_birth: datetime.date
    id_type: str = "citizen"

    def __repr__(self) -> str:
        return "RegistryQuery(<redacted>)"

    __str__ = __repr__


class IdentityRegistry(Protocol):
    """A source of truth for citizens' identities (see the module doc for the contract)."""

    async def match(self, query: RegistryQuery) -> RegistryAnswer:
        """MATCH when a person has exactly this number (of this kind), name and date of birth,
        else NO_MATCH.

        Raises `RegistryUnavailableError` when no answer could be had.
        """
        ...

    async def aclose(self) -> None:
        """Release connections; the registry is not used afterwards."""
        ...


def clean_name(name: str) -> str:
    """Unicode NFC with runs of whitespace collapsed to one space and the ends trimmed.

    The form in which a name is sent to a registry: case and diacritics are kept.
    """
    return " ".join(unicodedata.normalize("NFC", name).split())


def normalize_name(name: str) -> str:
    """The comparison key of a full name: NFC, casefolded, whitespace collapsed and trimmed.

    Diacritics are kept on purpose: "Nguyễn" and "Nguyen" are different names, while the
    composed (NFC) and decomposed (NFD) spellings of "Nguyễn" are the same name.
    """
    # Casefolding can decompose a few characters, so normalise again afterwards.
    return unicodedata.normalize("NFC", clean_name(name).casefold())

"""Per-version facts in model.json: which versions of a model are quantized, and how.

``model.json`` describes a model; a version whose graph differs in kind from the others (an
INT8 version beside the FP32 one) says so under the top-level key ``"versions"``::

    {"versions": {"2": {"precision": "int8", "source_version": "1",
                        "quantization": {"method": "...", "top1_agreement": 0.997, ...}}}}

A version absent from ``"versions"`` is FP32. This module is the one place that reads and
writes that key; it needs nothing but the standard library, so the service can use it too.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["FP32", "INT8", "precision", "version_facts", "with_version_facts"]

FP32, INT8 = "fp32", "int8"


def version_facts(card: Mapping[str, Any], version: str | int) -> dict[str, Any]:
    """What ``card`` (a parsed model.json) says about one version, ``precision`` always set.

    A version without an entry, or a card without ``"versions"``, is ``{"precision": "fp32"}``.
    The result is a copy: changing it does not change the card.
    """
    versions = card.get("versions") or {}
    facts = copy.deepcopy(dict(versions.get(str(version)) or {}))
    facts.setdefault("precision", FP32)
    return facts


def precision(card: Mapping[str, Any], version: str | int) -> str:
    """ "fp32" or "int8" (or whatever precision the card states) for one version."""
    return str(version_facts(card, version)["precision"])


def with_version_facts(
    card: Mapping[str, Any], version: str | int, facts: Mapping[str, Any]
) -> dict[str, Any]:
    """A copy of ``card`` with ``facts`` recorded for ``version`` (other versions kept)."""
    updated = copy.deepcopy(dict(card))
    versions = dict(updated.get("versions") or {})
    versions[str(version)] = copy.deepcopy(dict(facts))
    updated["versions"] = dict(sorted(versions.items(), key=lambda item: int(item[0])))
    return updated

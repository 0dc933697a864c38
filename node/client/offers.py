"""What the client hears on ``ads/1`` and the rule that decides whether a job can fit.

``Offer`` is one provider's latest signed ``ProviderAd`` (the host's gossip validator
already checked signature, freshness and order). ``OfferBook`` keeps the newest offer
per provider and forgets it when the ad's envelope expires. ``check_fit`` is the pure
rule ``buy`` applies before it pays; its error names exactly what is missing.

Prices: ads quote wei per GPU-hour; the escrow takes wei per second for the whole job.
``price_per_second`` rounds up, so a checker that converts back
(``price_per_second * 3600 // count``) never sees less than the ad asked.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from node import wire

SECONDS_PER_HOUR = 3600


@dataclass(frozen=True)
class Offer:
    provider: str  # checksummed address (the ad's signer)
    peer: str  # base58 libp2p peer id
    addrs: tuple[str, ...]
    gpu_class: str
    price_per_gpu_hour: int  # wei
    gpus_total: int
    gpus_free: int
    accepting: bool
    expires: float  # unix seconds

    @classmethod
    def from_envelope(cls, env: wire.Envelope) -> Offer:
        b = env.body
        return cls(
            provider=env.signer,
            peer=b["peer"],
            addrs=tuple(b["addrs"]),
            gpu_class=b["gpu_class"],
            price_per_gpu_hour=int(b["price_per_gpu_hour_wei"]),
            gpus_total=int(b["gpus_total"]),
            gpus_free=int(b["gpus_free"]),
            accepting=bool(b["accepting"]),
            expires=env.body["expiry"] / 1000.0,
        )


class OfferBook:
    """Newest fresh offer per provider."""

    def __init__(self) -> None:
        self._offers: dict[str, Offer] = {}

    def add(self, offer: Offer) -> None:
        self._offers[offer.provider] = offer

    def fresh(self, now: float | None = None) -> list[Offer]:
        now = time.time() if now is None else now
        self._offers = {k: o for k, o in self._offers.items() if o.expires > now}
        return list(self._offers.values())

    def get(self, provider: str) -> Offer | None:
        return self._offers.get(provider)


def price_per_second(price_per_gpu_hour: int, count: int) -> int:
    """Escrow price (wei/s for the whole job) that pays at least the hourly GPU price."""
    return -(-price_per_gpu_hour * count // SECONDS_PER_HOUR)


def check_fit(
    offers: Iterable[Offer], gpu_class: str, count: int, max_price: int | None
) -> list[Offer]:
    """Offers that can take the job, cheapest first; raise ValueError(reason) if none."""
    offers = list(offers)
    # Someone advertises this class and accepts deploys
    of_class = [o for o in offers if o.gpu_class == gpu_class and o.accepting]
    if not of_class:
        heard = sorted({o.gpu_class for o in offers if o.accepting})
        if heard:
            also = f" (heard: {', '.join(heard)})"
        elif offers:  # providers are there but refuse deploys (no container engine, say)
            also = f" ({len(offers)} provider(s) heard, none accepting deploys)"
        else:
            also = " (no provider ad heard at all)"
        raise ValueError(f"no provider of class {gpu_class!r} is advertising{also}")
    # One of them has enough free GPUs
    enough = [o for o in of_class if o.gpus_free >= count]
    if not enough:
        most = max(o.gpus_free for o in of_class)
        raise ValueError(
            f"not enough free GPUs: {count} wanted, at most {most} free at one {gpu_class} provider"
        )
    # One of those asks no more than the buyer's maximum
    priced = [o for o in enough if max_price is None or o.price_per_gpu_hour <= max_price]
    if not priced:
        cheapest = min(o.price_per_gpu_hour for o in enough)
        raise ValueError(
            f"price above max: the cheapest fitting offer asks {cheapest} wei/GPU-hour, "
            f"max price is {max_price}"
        )
    return sorted(priced, key=lambda o: (o.price_per_gpu_hour, o.provider))

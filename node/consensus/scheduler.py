"""Deterministic provider choice for a job.

Every checker runs ``choose_provider`` over the same view (the job's requirements and
the providers' verified capacity as of the job's creation) and gets the same answer, so
honest leaders of successive rounds propose the same provider. Voters only require the
proposed provider to be *eligible* (``is_eligible_provider``), not their own first
choice: views differ a little between checkers, and any eligible provider is safe.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from eth_utils import keccak, to_canonical_address

# A provider must hold a PoPW pass certificate from one of the last POPW_STANDING_EPOCHS epochs.
POPW_STANDING_EPOCHS = 2


@dataclass(frozen=True)
class JobSpec:
    job_id: int
    gpu_class: str
    gpu_count: int
    max_price: int  # wei per GPU-hour, the most the buyer pays


@dataclass(frozen=True)
class ProviderInfo:
    address: str
    gpu_class: str
    free_gpus: int
    price: int  # wei per GPU-hour asked
    last_pass_epoch: int | None  # latest epoch with a PoPW PASS certificate
    score: int = 0  # reliability points; higher is preferred


def has_popw_standing(provider: ProviderInfo, epoch: int) -> bool:
    """Verified recently: a PASS certificate in this epoch or the previous one(s)."""
    last = provider.last_pass_epoch
    return last is not None and 0 <= epoch - last < POPW_STANDING_EPOCHS


def is_eligible_provider(job: JobSpec, provider: ProviderInfo, epoch: int) -> bool:
    # The provider's GPUs are of the class the job bought
    if provider.gpu_class != job.gpu_class:
        return False
    # It has enough free GPUs
    if provider.free_gpus < job.gpu_count:
        return False
    # It asks no more than the buyer pays
    if provider.price > job.max_price:
        return False
    # Its GPUs passed PoPW recently
    return has_popw_standing(provider, epoch)


# Why a provider is not eligible for a job, nearest miss last: a round's reason is the
# nearest miss over all providers (``round_reason``). "no_capacity" means the provider
# passed every other check (standing included), "no_standing" that it fits the job but
# holds no recent PoPW PASS certificate; "stale_ad" / "not_accepting" come from the ad
# index (a provider heard from whose ad expired: killed, paused, cut off or gossip lag).
MISS_ORDER = ("stale_ad", "not_accepting", "class", "price", "no_standing", "no_capacity")


def why_not_eligible(job: JobSpec, provider: ProviderInfo, epoch: int) -> str:
    """The first check ``is_eligible_provider`` fails, or "eligible"."""
    if provider.gpu_class != job.gpu_class:
        return "class"
    if provider.price > job.max_price:
        return "price"
    if not has_popw_standing(provider, epoch):
        return "no_standing"
    if provider.free_gpus < job.gpu_count:
        return "no_capacity"
    return "eligible"


def round_reason(misses: Iterable[str]) -> str:
    """Why nobody could be proposed, from each known provider's miss: the nearest miss
    ("eligible" if some provider is), "no_ad" when no provider was ever heard from."""
    best = ""
    for miss in misses:
        if miss == "eligible":
            return miss
        if miss in MISS_ORDER and (not best or MISS_ORDER.index(miss) > MISS_ORDER.index(best)):
            best = miss
    return best or "no_ad"


def tie_break(job_id: int, provider: str) -> bytes:
    """Per-job pseudo-random order, so ties do not always favour one provider."""
    return keccak(job_id.to_bytes(32, "big") + to_canonical_address(provider))


def provider_sort_key(job: JobSpec, provider: ProviderInfo) -> tuple:
    # Cheapest first, then best score, then hash of (job, provider)
    return (provider.price, -provider.score, tie_break(job.job_id, provider.address))


def eligible_providers(
    job: JobSpec, providers: Iterable[ProviderInfo], epoch: int
) -> list[ProviderInfo]:
    """Eligible providers in preference order."""
    ok = [p for p in providers if is_eligible_provider(job, p, epoch)]
    return sorted(ok, key=lambda p: provider_sort_key(job, p))


def choose_provider(job: JobSpec, providers: Iterable[ProviderInfo], epoch: int) -> str | None:
    """The provider every honest leader proposes for ``job``; None if nobody fits."""
    ranked = eligible_providers(job, providers, epoch)
    return ranked[0].address if ranked else None

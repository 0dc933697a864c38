# pragma version ~=0.4.3
"""
@title Kaisar proof-of-physical-work rewards
@notice A PoPW quorum certificate (PopwVote with verdict PASS, >= 2/3 of active
        checker stake, verified by the Staking contract) earns its provider one
        point and REWARD_PER_CERT wei from the funded pool: CHECKER_BPS of it is
        split equally among the signing checkers, the rest goes to the provider.
        Each (epoch, provider) is credited once. Credits vest linearly over
        UNLOCK_PERIOD; `claim` pays only what has vested.
@dev    Vesting per account is one schedule (bounded gas, no list of grants): on a
        new credit the unvested remainder and the new amount vest together until
        the amount-weighted average of their end times. Totals are exact; a lone
        credit vests linearly over exactly UNLOCK_PERIOD.
"""

interface Staking:
    def quorum_signers(
        struct_hash: bytes32, sigs: DynArray[Bytes[65], MAX_CHECKERS]
    ) -> DynArray[address, MAX_CHECKERS]: view


event Funded:
    sender: indexed(address)
    amount: uint256

event Certified:
    epoch: indexed(uint256)
    provider: indexed(address)
    gpu_class: bytes32
    provider_reward: uint256
    checker_reward: uint256
    signers: uint256

event Claimed:
    account: indexed(address)
    amount: uint256


struct Vesting:
    locked: uint256     # not yet vested as of `start`
    start: uint256      # last time the schedule was settled
    end: uint256        # when `locked` is fully vested
    vested: uint256     # vested, not yet claimed


MAX_CHECKERS: constant(uint256) = 64
BPS: constant(uint256) = 10000
VERDICT_PASS: constant(uint256) = 1
POPW_VOTE_TYPE_HASH: constant(bytes32) = keccak256(
    "PopwVote(uint256 epoch,address provider,uint256 verdict,bytes32 gpuClass)"
)

STAKING: public(immutable(address))
REWARD_PER_CERT: public(immutable(uint256))
CHECKER_BPS: public(immutable(uint256))
UNLOCK_PERIOD: public(immutable(uint256))

pool: public(uint256)                    # funded, not yet credited
credited: public(HashMap[uint256, HashMap[address, bool]])
points: public(HashMap[address, uint256])
vesting: public(HashMap[address, Vesting])


@deploy
def __init__(_staking: address, _reward_per_cert: uint256, _checker_bps: uint256, _unlock_period: uint256):
    assert _checker_bps <= BPS, "bps > 10000"
    assert _unlock_period > 0, "unlock period is zero"
    STAKING = _staking
    REWARD_PER_CERT = _reward_per_cert
    CHECKER_BPS = _checker_bps
    UNLOCK_PERIOD = _unlock_period


@external
@payable
def fund():
    assert msg.value > 0, "zero amount"
    self.pool += msg.value
    log Funded(sender=msg.sender, amount=msg.value)


@view
@internal
def _settled(v: Vesting) -> Vesting:
    """The schedule moved forward to now: newly vested part moved to `vested`."""
    out: Vesting = v
    if block.timestamp >= v.end:
        out.vested += v.locked
        out.locked = 0
    elif block.timestamp > v.start:
        part: uint256 = v.locked * (block.timestamp - v.start) // (v.end - v.start)
        out.vested += part
        out.locked -= part
    out.start = max(block.timestamp, v.start)
    return out


@internal
def _credit(account: address, amount: uint256):
    if amount == 0:
        return
    v: Vesting = self._settled(self.vesting[account])
    new_end: uint256 = block.timestamp + UNLOCK_PERIOD
    if v.locked > 0:
        new_end = (v.locked * v.end + amount * new_end) // (v.locked + amount)
    v.locked += amount
    v.end = new_end
    self.vesting[account] = v


@view
@external
def claimable(account: address) -> uint256:
    return self._settled(self.vesting[account]).vested


@view
@external
def locked(account: address) -> uint256:
    return self._settled(self.vesting[account]).locked


@view
@external
def popw_struct_hash(epoch: uint256, provider: address, gpu_class: bytes32) -> bytes32:
    return keccak256(abi_encode(POPW_VOTE_TYPE_HASH, epoch, provider, VERDICT_PASS, gpu_class))


@external
def submit_popw(
    epoch: uint256, provider: address, gpu_class: bytes32, sigs: DynArray[Bytes[65], MAX_CHECKERS]
):
    """Credit a PASS PoPW quorum certificate for (epoch, provider), once."""
    # Verify this provider was not already credited for this epoch
    assert not self.credited[epoch][provider], "already credited"
    assert provider != empty(address), "zero provider"
    # Verify >= 2/3 of active checker stake signed PASS for exactly this (epoch, provider, class)
    signers: DynArray[address, MAX_CHECKERS] = staticcall Staking(STAKING).quorum_signers(
        keccak256(abi_encode(POPW_VOTE_TYPE_HASH, epoch, provider, VERDICT_PASS, gpu_class)), sigs
    )
    # Verify the pool can pay the reward
    assert self.pool >= REWARD_PER_CERT, "reward pool exhausted"
    self.credited[epoch][provider] = True
    self.pool -= REWARD_PER_CERT
    self.points[provider] += 1
    share: uint256 = REWARD_PER_CERT * CHECKER_BPS // BPS // len(signers)
    for signer: address in signers:
        self._credit(signer, share)
    provider_reward: uint256 = REWARD_PER_CERT - share * len(signers)
    self._credit(provider, provider_reward)
    log Certified(
        epoch=epoch,
        provider=provider,
        gpu_class=gpu_class,
        provider_reward=provider_reward,
        checker_reward=share,
        signers=len(signers),
    )


@external
@nonreentrant
def claim() -> uint256:
    """Pay the caller everything vested so far."""
    v: Vesting = self._settled(self.vesting[msg.sender])
    amount: uint256 = v.vested
    assert amount > 0, "nothing vested"
    v.vested = 0
    self.vesting[msg.sender] = v
    log Claimed(account=msg.sender, amount=amount)
    raw_call(msg.sender, b"", value=amount)
    return amount

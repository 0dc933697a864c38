# pragma version ~=0.4.3
"""
@title Kaisar checker registry, staking and slashing
@notice A checker is a license token in custody here, bound to a node key (the
        secp256k1 key that signs votes), backed by stake >= MIN_STAKE. Active
        checkers and their stake form the quorum set. This contract is also the
        EIP-712 verifying contract of every Kaisar vote: `quorum_signers` is the one
        place that decides whether signatures form a 2/3-stake quorum certificate.
"""

interface License:
    def ownerOf(_tokenId: uint256) -> address: view
    def transferFrom(_from: address, _to: address, _tokenId: uint256): payable


event Registered:
    node_key: indexed(address)
    operator: indexed(address)
    token_id: uint256

event Unregistered:
    node_key: indexed(address)

event Staked:
    node_key: indexed(address)
    amount: uint256
    total: uint256

event Unbonding:
    node_key: indexed(address)
    amount: uint256
    release_time: uint256

event Withdrawn:
    node_key: indexed(address)
    receiver: indexed(address)
    amount: uint256

event Slashed:
    node_key: indexed(address)
    reporter: indexed(address)
    kind: uint256
    evidence: bytes32
    amount: uint256
    reward: uint256

event CheckerSetChanged:
    node_key: indexed(address)
    active: bool
    total_active_stake: uint256


struct Checker:
    operator: address      # license owner who staked; receives withdrawals
    token_id: uint256      # license in custody while registered
    registered: bool
    stake: uint256         # bonded stake (counts for quorums when active)
    unbonding: uint256     # leaving stake, still slashable until withdrawn
    release_time: uint256  # when `unbonding` may be withdrawn


MAX_CHECKERS: constant(uint256) = 64
BPS: constant(uint256) = 10000
KIND_ASSIGN: constant(uint256) = 1
KIND_POPW: constant(uint256) = 2

DOMAIN_TYPE_HASH: constant(bytes32) = keccak256(
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
DOMAIN_NAME_HASH: constant(bytes32) = keccak256("Kaisar")
DOMAIN_VERSION_HASH: constant(bytes32) = keccak256("1")
ASSIGN_VOTE_TYPE_HASH: constant(bytes32) = keccak256(
    "AssignVote(uint256 jobId,uint256 round,address provider)"
)
POPW_VOTE_TYPE_HASH: constant(bytes32) = keccak256(
    "PopwVote(uint256 epoch,address provider,uint256 verdict,bytes32 gpuClass)"
)
BIND_NODE_KEY_TYPE_HASH: constant(bytes32) = keccak256(
    "BindNodeKey(address operator,uint256 tokenId)"
)
# secp256k1 n / 2: signatures with a larger s are malleated copies (EIP-2)
HALF_N: constant(uint256) = 57896044618658097711785492504343953926418782139537452191302581570759080747168

LICENSE: public(immutable(address))
MIN_STAKE: public(immutable(uint256))
UNBONDING_PERIOD: public(immutable(uint256))
SLASH_BPS: public(immutable(uint256))
REPORTER_BPS: public(immutable(uint256))

admin: public(address)
checkers: public(HashMap[address, Checker])
active: DynArray[address, MAX_CHECKERS]
active_index: HashMap[address, uint256]  # position + 1 in `active`, 0 = absent
total_active_stake: public(uint256)
counted: HashMap[address, uint256]  # stake of each checker included in total_active_stake
evidence_used: public(HashMap[bytes32, bool])
slashed_total: public(uint256)


@deploy
def __init__(
    _license: address,
    _min_stake: uint256,
    _unbonding_period: uint256,
    _slash_bps: uint256,
    _reporter_bps: uint256,
):
    assert _min_stake > 0, "min stake is zero"
    assert _slash_bps <= BPS and _reporter_bps <= BPS, "bps > 10000"
    LICENSE = _license
    MIN_STAKE = _min_stake
    UNBONDING_PERIOD = _unbonding_period
    SLASH_BPS = _slash_bps
    REPORTER_BPS = _reporter_bps
    self.admin = msg.sender


# EIP-712 -------------------------------------------------------------------------

@view
@internal
def _domain_separator() -> bytes32:
    return keccak256(
        abi_encode(DOMAIN_TYPE_HASH, DOMAIN_NAME_HASH, DOMAIN_VERSION_HASH, chain.id, self)
    )


@view
@external
def domain_separator() -> bytes32:
    return self._domain_separator()


@view
@internal
def _digest(struct_hash: bytes32) -> bytes32:
    return keccak256(concat(b"\x19\x01", self._domain_separator(), struct_hash))


@pure
@internal
def _recover(digest: bytes32, sig: Bytes[65]) -> address:
    """ecrecover of r || s || v; empty(address) for anything malformed."""
    if len(sig) != 65:
        return empty(address)
    r: uint256 = extract32(sig, 0, output_type=uint256)
    s: uint256 = extract32(sig, 32, output_type=uint256)
    v: uint256 = convert(slice(sig, 64, 1), uint256)
    if v != 27 and v != 28:
        return empty(address)
    if s == 0 or s > HALF_N:
        return empty(address)
    return ecrecover(digest, v, r, s)


@view
@external
def recover(struct_hash: bytes32, sig: Bytes[65]) -> address:
    """The signer of an EIP-712 struct hash under this domain (zero if malformed)."""
    return self._recover(self._digest(struct_hash), sig)


# quorum --------------------------------------------------------------------------------

@view
@internal
def _quorum_signers(
    struct_hash: bytes32, sigs: DynArray[Bytes[65], MAX_CHECKERS]
) -> DynArray[address, MAX_CHECKERS]:
    digest: bytes32 = self._digest(struct_hash)
    signers: DynArray[address, MAX_CHECKERS] = []
    weight: uint256 = 0
    for sig: Bytes[65] in sigs:
        signer: address = self._recover(digest, sig)
        # Verify the signature is well formed and canonical (low s)
        assert signer != empty(address), "bad signature"
        # Verify the signer is an active checker right now
        assert self.active_index[signer] != 0, "unknown signer"
        # Verify nobody is counted twice
        assert signer not in signers, "duplicate signer"
        signers.append(signer)
        weight += self.checkers[signer].stake
    # Verify the signers hold at least 2/3 of the active stake
    assert self.total_active_stake > 0, "no active checkers"
    assert weight * 3 >= self.total_active_stake * 2, "insufficient quorum"
    return signers


@view
@external
def quorum_signers(
    struct_hash: bytes32, sigs: DynArray[Bytes[65], MAX_CHECKERS]
) -> DynArray[address, MAX_CHECKERS]:
    """Signers of a valid quorum certificate over `struct_hash`; reverts otherwise."""
    return self._quorum_signers(struct_hash, sigs)


@view
@external
def active_checkers() -> (DynArray[address, MAX_CHECKERS], DynArray[uint256, MAX_CHECKERS]):
    """The whole quorum set in one call: node keys and their bonded stake."""
    stakes: DynArray[uint256, MAX_CHECKERS] = []
    for key: address in self.active:
        stakes.append(self.checkers[key].stake)
    return self.active, stakes


@view
@external
def is_active(node_key: address) -> bool:
    return self.active_index[node_key] != 0


@view
@external
def stake_of(node_key: address) -> uint256:
    """Bonded stake that counts for quorums (0 unless active)."""
    if self.active_index[node_key] == 0:
        return 0
    return self.checkers[node_key].stake


@view
@external
def checker_count() -> uint256:
    return len(self.active)


@internal
def _sync(node_key: address):
    """Put the checker in or out of the active set after any change."""
    c: Checker = self.checkers[node_key]
    should: bool = c.registered and c.stake >= MIN_STAKE
    idx: uint256 = self.active_index[node_key]
    if should and idx == 0:
        assert len(self.active) < MAX_CHECKERS, "checker set full"
        self.active.append(node_key)
        self.active_index[node_key] = len(self.active)
    elif not should and idx != 0:
        last: address = self.active.pop()
        if last != node_key:
            self.active[idx - 1] = last
            self.active_index[last] = idx
        self.active_index[node_key] = 0
    # total_active_stake == sum of `counted`, and counted == stake exactly while active
    counted: uint256 = c.stake if should else 0
    self.total_active_stake = self.total_active_stake - self.counted[node_key] + counted
    self.counted[node_key] = counted
    log CheckerSetChanged(node_key=node_key, active=should, total_active_stake=self.total_active_stake)


# registration and stake ----------------------------------------------------------------

@external
@payable
def register(token_id: uint256, node_key: address, key_sig: Bytes[65] = b""):
    """Bind a license (moved into custody) to a node key; msg.value is initial stake.

    Unless the node key itself sends, it must consent by signing
    BindNodeKey(operator, tokenId): nobody can squat another node's key.
    """
    assert node_key != empty(address), "zero node key"
    # Verify the node key agreed to be bound to this operator and license
    if msg.sender != node_key:
        consent: bytes32 = keccak256(abi_encode(BIND_NODE_KEY_TYPE_HASH, msg.sender, token_id))
        assert self._recover(self._digest(consent), key_sig) == node_key, "node key did not consent"
    c: Checker = self.checkers[node_key]
    # Verify the key is unused or already belongs to this operator
    assert c.operator == empty(address) or c.operator == msg.sender, "node key taken"
    assert not c.registered, "already registered"
    # Verify the caller owns the license (custody needs an approval)
    assert staticcall License(LICENSE).ownerOf(token_id) == msg.sender, "not license owner"
    extcall License(LICENSE).transferFrom(msg.sender, self, token_id)
    c.operator = msg.sender
    c.token_id = token_id
    c.registered = True
    c.stake += msg.value
    self.checkers[node_key] = c
    log Registered(node_key=node_key, operator=msg.sender, token_id=token_id)
    if msg.value > 0:
        log Staked(node_key=node_key, amount=msg.value, total=c.stake)
    self._sync(node_key)


@external
@payable
def stake(node_key: address):
    assert msg.value > 0, "zero stake"
    assert self.checkers[node_key].operator == msg.sender, "not operator"
    assert self.checkers[node_key].registered, "not registered"
    self.checkers[node_key].stake += msg.value
    log Staked(node_key=node_key, amount=msg.value, total=self.checkers[node_key].stake)
    self._sync(node_key)


@internal
def _start_unbonding(node_key: address, amount: uint256):
    self.checkers[node_key].stake -= amount
    self.checkers[node_key].unbonding += amount
    release: uint256 = block.timestamp + UNBONDING_PERIOD
    self.checkers[node_key].release_time = release
    log Unbonding(node_key=node_key, amount=amount, release_time=release)


@external
def unstake(node_key: address, amount: uint256):
    """Move bonded stake to unbonding; it stays slashable until withdrawn."""
    assert self.checkers[node_key].operator == msg.sender, "not operator"
    assert amount > 0, "zero amount"
    assert amount <= self.checkers[node_key].stake, "more than staked"
    self._start_unbonding(node_key, amount)
    self._sync(node_key)


@external
def unregister(node_key: address):
    """Leave the set: license back to the operator, all stake starts unbonding."""
    c: Checker = self.checkers[node_key]
    assert c.operator == msg.sender, "not operator"
    assert c.registered, "not registered"
    self.checkers[node_key].registered = False
    if c.stake > 0:
        self._start_unbonding(node_key, c.stake)
    self._sync(node_key)
    extcall License(LICENSE).transferFrom(self, c.operator, c.token_id)
    log Unregistered(node_key=node_key)


@external
@nonreentrant
def withdraw(node_key: address):
    c: Checker = self.checkers[node_key]
    assert c.operator == msg.sender, "not operator"
    assert c.unbonding > 0, "nothing unbonding"
    assert block.timestamp >= c.release_time, "still unbonding"
    self.checkers[node_key].unbonding = 0
    raw_call(c.operator, b"", value=c.unbonding)
    log Withdrawn(node_key=node_key, receiver=c.operator, amount=c.unbonding)


# slashing ------------------------------------------------------------------------------

@internal
def _slash(signer: address, kind: uint256, evidence: bytes32):
    # Verify the equivocating key belongs to a (possibly former) checker with stake
    c: Checker = self.checkers[signer]
    assert c.operator != empty(address), "signer is not a checker"
    # Verify this evidence has not been used before
    assert not self.evidence_used[evidence], "evidence already used"
    self.evidence_used[evidence] = True
    at_risk: uint256 = c.stake + c.unbonding
    assert at_risk > 0, "nothing to slash"
    cut: uint256 = at_risk * SLASH_BPS // BPS
    from_stake: uint256 = min(cut, c.stake)
    c.stake -= from_stake
    c.unbonding -= cut - from_stake
    reward: uint256 = cut * REPORTER_BPS // BPS
    self.slashed_total += cut - reward
    # Remove the checker: stake left over starts unbonding, license back to the operator
    was_registered: bool = c.registered
    c.registered = False
    if c.stake > 0:
        c.unbonding += c.stake
        c.stake = 0
        c.release_time = block.timestamp + UNBONDING_PERIOD
    self.checkers[signer] = c
    self._sync(signer)
    if was_registered:
        extcall License(LICENSE).transferFrom(self, c.operator, c.token_id)
        log Unregistered(node_key=signer)
    log Slashed(node_key=signer, reporter=msg.sender, kind=kind, evidence=evidence, amount=cut, reward=reward)
    if reward > 0:
        raw_call(msg.sender, b"", value=reward)


@external
@nonreentrant
def slash_assign(
    job_id: uint256,
    round: uint256,
    provider_a: address,
    sig_a: Bytes[65],
    provider_b: address,
    sig_b: Bytes[65],
):
    """Evidence: one key signed AssignVotes for two providers in the same (job, round)."""
    # Verify the two votes differ
    assert provider_a != provider_b, "votes do not conflict"
    signer_a: address = self._recover(
        self._digest(keccak256(abi_encode(ASSIGN_VOTE_TYPE_HASH, job_id, round, provider_a))), sig_a
    )
    signer_b: address = self._recover(
        self._digest(keccak256(abi_encode(ASSIGN_VOTE_TYPE_HASH, job_id, round, provider_b))), sig_b
    )
    # Verify both are valid signatures by the same key
    assert signer_a != empty(address) and signer_b != empty(address), "bad signature"
    assert signer_a == signer_b, "different signers"
    self._slash(signer_a, KIND_ASSIGN, keccak256(abi_encode(KIND_ASSIGN, job_id, round, signer_a)))


@external
@nonreentrant
def slash_popw(
    epoch: uint256,
    provider: address,
    verdict_a: uint256,
    gpu_class_a: bytes32,
    sig_a: Bytes[65],
    verdict_b: uint256,
    gpu_class_b: bytes32,
    sig_b: Bytes[65],
):
    """Evidence: one key signed two different PoPW verdicts for the same (epoch, provider)."""
    # Verify the two votes differ
    assert verdict_a != verdict_b or gpu_class_a != gpu_class_b, "votes do not conflict"
    signer_a: address = self._recover(
        self._digest(keccak256(abi_encode(POPW_VOTE_TYPE_HASH, epoch, provider, verdict_a, gpu_class_a))),
        sig_a,
    )
    signer_b: address = self._recover(
        self._digest(keccak256(abi_encode(POPW_VOTE_TYPE_HASH, epoch, provider, verdict_b, gpu_class_b))),
        sig_b,
    )
    # Verify both are valid signatures by the same key
    assert signer_a != empty(address) and signer_b != empty(address), "bad signature"
    assert signer_a == signer_b, "different signers"
    self._slash(signer_a, KIND_POPW, keccak256(abi_encode(KIND_POPW, epoch, provider, signer_a)))


@external
@nonreentrant
def withdraw_slashed(_to: address):
    """Admin moves slashed funds (minus reporter rewards) to a treasury."""
    assert msg.sender == self.admin, "admin only"
    amount: uint256 = self.slashed_total
    assert amount > 0, "nothing slashed"
    self.slashed_total = 0
    raw_call(_to, b"", value=amount)

# pragma version ~=0.4.3
"""
@title Kaisar job escrow
@notice Holds an end-user's payment for a container job. A quorum certificate of
        checkers (AssignVote, verified by the Staking contract) assigns the job to a
        provider; the provider is paid pro rata for time served; the owner can close
        at any time and gets the unused part back; a certified failure (FailureVote
        QC) reassigns the rest of the job to a later round, or refunds it after
        MAX_REASSIGNMENTS failures or when less than MIN_REASSIGN seconds are left
        (too little to find, deploy and reach another provider). Checks-effects-
        interactions and one reentrancy lock on every function that sends value.
"""

interface Staking:
    def quorum_signers(
        struct_hash: bytes32, sigs: DynArray[Bytes[65], MAX_CHECKERS]
    ) -> DynArray[address, MAX_CHECKERS]: view


event JobCreated:
    job_id: indexed(uint256)
    owner: indexed(address)
    spec_hash: bytes32
    gpu_class: bytes32
    count: uint256
    image: String[MAX_IMAGE]
    port: uint256
    duration: uint256
    price: uint256

event JobAssigned:
    job_id: indexed(uint256)
    provider: indexed(address)
    round: uint256
    signers: uint256

event JobReassigned:
    job_id: indexed(uint256)
    failed_provider: indexed(address)
    round: uint256
    remaining: uint256

event JobExtended:
    job_id: indexed(uint256)
    seconds: uint256

event JobClosed:
    job_id: indexed(uint256)
    state: uint256
    provider_paid: uint256
    refund: uint256

event ProviderPaid:
    job_id: indexed(uint256)
    provider: indexed(address)
    amount: uint256

event Withdrawn:
    account: indexed(address)
    amount: uint256


struct Job:
    owner: address
    spec_hash: bytes32
    gpu_class: bytes32
    count: uint256
    image: String[MAX_IMAGE]
    port: uint256
    duration: uint256    # seconds bought in total
    price: uint256       # wei per second (the owner's maximum; escrow = price * duration)
    state: uint256
    round: uint256       # lowest round a certificate may carry (bumped by failures)
    provider: address
    started: uint256     # when the current provider was assigned
    remaining: uint256   # seconds still to serve when the current assignment started
    paid_until: uint256  # provider paid for time up to here
    deposit: uint256     # wei still held for this job
    opened_at: uint256   # when the job (re)entered OPEN
    failures: uint256


MAX_CHECKERS: constant(uint256) = 64
MAX_IMAGE: constant(uint256) = 256
MAX_REASSIGNMENTS: constant(uint256) = 3

OPEN: constant(uint256) = 1
ASSIGNED: constant(uint256) = 2
CLOSED: constant(uint256) = 3     # owner closed
DONE: constant(uint256) = 4       # ran its full duration
FAILED: constant(uint256) = 5     # refunded after certified failures
EXPIRED: constant(uint256) = 6    # never assigned in time, refunded

ASSIGN_VOTE_TYPE_HASH: constant(bytes32) = keccak256(
    "AssignVote(uint256 jobId,uint256 round,address provider)"
)
FAILURE_VOTE_TYPE_HASH: constant(bytes32) = keccak256(
    "FailureVote(uint256 jobId,uint256 round,address provider)"
)

STAKING: public(immutable(address))
ASSIGN_TIMEOUT: public(immutable(uint256))
# A failure certified with less paid time than this left ends the job (FAILED): the
# provider is paid for time served and the owner refunded the rest, instead of a
# reassignment that could not be served before the paid time runs out.
MIN_REASSIGN: public(immutable(uint256))

jobs: public(HashMap[uint256, Job])
job_count: public(uint256)
balances: public(HashMap[address, uint256])  # credited payouts, pulled by withdraw()


@deploy
def __init__(_staking: address, _assign_timeout: uint256, _min_reassign: uint256):
    STAKING = _staking
    ASSIGN_TIMEOUT = _assign_timeout
    MIN_REASSIGN = _min_reassign


@view
@internal
def _served_until(job: Job) -> uint256:
    return min(block.timestamp, job.started + job.remaining)


@view
@external
def earned(job_id: uint256) -> uint256:
    """What the current provider could claim now."""
    job: Job = self.jobs[job_id]
    if job.state != ASSIGNED:
        return 0
    return (self._served_until(job) - job.paid_until) * job.price


@view
@external
def assign_struct_hash(job_id: uint256, round: uint256, provider: address) -> bytes32:
    return keccak256(abi_encode(ASSIGN_VOTE_TYPE_HASH, job_id, round, provider))


@external
@payable
def create_job(
    spec_hash: bytes32,
    gpu_class: bytes32,
    count: uint256,
    image: String[MAX_IMAGE],
    port: uint256,
    duration: uint256,
    price_per_second: uint256,
) -> uint256:
    """Open a job; msg.value must be exactly price_per_second * duration."""
    assert count > 0, "count is zero"
    assert len(image) > 0, "empty image"
    assert port > 0 and port < 65536, "bad port"
    assert duration > 0, "duration is zero"
    assert price_per_second > 0, "price is zero"
    assert msg.value == price_per_second * duration, "wrong payment"
    job_id: uint256 = self.job_count + 1
    self.job_count = job_id
    self.jobs[job_id] = Job(
        owner=msg.sender,
        spec_hash=spec_hash,
        gpu_class=gpu_class,
        count=count,
        image=image,
        port=port,
        duration=duration,
        price=price_per_second,
        state=OPEN,
        round=0,
        provider=empty(address),
        started=0,
        remaining=duration,
        paid_until=0,
        deposit=msg.value,
        opened_at=block.timestamp,
        failures=0,
    )
    log JobCreated(
        job_id=job_id,
        owner=msg.sender,
        spec_hash=spec_hash,
        gpu_class=gpu_class,
        count=count,
        image=image,
        port=port,
        duration=duration,
        price=price_per_second,
    )
    return job_id


@external
def assign(
    job_id: uint256, round: uint256, provider: address, sigs: DynArray[Bytes[65], MAX_CHECKERS]
):
    """Record the first valid AssignVote quorum certificate for an open job."""
    job: Job = self.jobs[job_id]
    # Verify the job is waiting for a provider
    assert job.state == OPEN, "job not open"
    # Verify the certificate is not from a round closed by a failure
    assert round >= job.round, "stale round"
    assert provider != empty(address), "zero provider"
    # Verify >= 2/3 of active checker stake signed exactly this vote (reverts otherwise)
    signers: DynArray[address, MAX_CHECKERS] = staticcall Staking(STAKING).quorum_signers(
        keccak256(abi_encode(ASSIGN_VOTE_TYPE_HASH, job_id, round, provider)), sigs
    )
    job.state = ASSIGNED
    job.round = round
    job.provider = provider
    job.started = block.timestamp
    job.paid_until = block.timestamp
    self.jobs[job_id] = job
    log JobAssigned(job_id=job_id, provider=provider, round=round, signers=len(signers))


@external
@payable
def extend(job_id: uint256, seconds: uint256):
    """Buy more time at the job's price."""
    job: Job = self.jobs[job_id]
    assert msg.sender == job.owner, "not job owner"
    assert job.state == OPEN or job.state == ASSIGNED, "job finished"
    if job.state == ASSIGNED:
        # Verify the job has not already run out
        assert block.timestamp < job.started + job.remaining, "job already ended"
    assert seconds > 0, "zero seconds"
    assert msg.value == seconds * job.price, "wrong payment"
    self.jobs[job_id].duration += seconds
    self.jobs[job_id].remaining += seconds
    self.jobs[job_id].deposit += msg.value
    log JobExtended(job_id=job_id, seconds=seconds)


@internal
def _settle_provider(job_id: uint256) -> uint256:
    """Credit the current provider for time served up to now; returns the amount."""
    job: Job = self.jobs[job_id]
    served: uint256 = self._served_until(job)
    amount: uint256 = (served - job.paid_until) * job.price
    self.jobs[job_id].paid_until = served
    self.jobs[job_id].deposit -= amount
    if amount > 0:
        self.balances[job.provider] += amount
        log ProviderPaid(job_id=job_id, provider=job.provider, amount=amount)
    return amount


@external
@nonreentrant
def claim(job_id: uint256) -> uint256:
    """The assigned provider collects payment for time served so far."""
    job: Job = self.jobs[job_id]
    assert job.state == ASSIGNED, "job not running"
    assert msg.sender == job.provider, "not the provider"
    served: uint256 = self._served_until(job)
    amount: uint256 = (served - job.paid_until) * job.price
    assert amount > 0, "nothing to claim"
    self.jobs[job_id].paid_until = served
    self.jobs[job_id].deposit -= amount
    log ProviderPaid(job_id=job_id, provider=msg.sender, amount=amount)
    raw_call(msg.sender, b"", value=amount)
    return amount


@external
@nonreentrant
def close(job_id: uint256):
    """The owner ends the job: provider credited for time served, the rest refunded now."""
    job: Job = self.jobs[job_id]
    assert msg.sender == job.owner, "not job owner"
    assert job.state == OPEN or job.state == ASSIGNED, "job finished"
    paid: uint256 = 0
    if job.state == ASSIGNED:
        paid = self._settle_provider(job_id)
    refund: uint256 = self.jobs[job_id].deposit
    self.jobs[job_id].deposit = 0
    self.jobs[job_id].state = CLOSED
    log JobClosed(job_id=job_id, state=CLOSED, provider_paid=paid, refund=refund)
    if refund > 0:
        raw_call(msg.sender, b"", value=refund)


@external
def fail(
    job_id: uint256, round: uint256, provider: address, sigs: DynArray[Bytes[65], MAX_CHECKERS]
):
    """A FailureVote QC ends the current assignment: reassign the rest, or refund it
    after MAX_REASSIGNMENTS failures or with less than MIN_REASSIGN seconds left."""
    job: Job = self.jobs[job_id]
    # Verify the certificate is about the current assignment
    assert job.state == ASSIGNED, "job not running"
    assert round == job.round and provider == job.provider, "not the current assignment"
    # Verify paid time is left: after its end the job ran its course (``expire``: DONE,
    # the provider paid to the end, as a failure would pay it), nothing to reassign or refund
    assert block.timestamp < job.started + job.remaining, "job already ended"
    # Verify >= 2/3 of active checker stake certified the failure
    signers: DynArray[address, MAX_CHECKERS] = staticcall Staking(STAKING).quorum_signers(
        keccak256(abi_encode(FAILURE_VOTE_TYPE_HASH, job_id, round, provider)), sigs
    )
    paid: uint256 = self._settle_provider(job_id)
    end: uint256 = job.started + job.remaining
    left: uint256 = end - self.jobs[job_id].paid_until
    failures: uint256 = job.failures + 1
    self.jobs[job_id].failures = failures
    if left > 0 and left >= MIN_REASSIGN and failures <= MAX_REASSIGNMENTS:
        self.jobs[job_id].state = OPEN
        self.jobs[job_id].round = round + 1
        self.jobs[job_id].provider = empty(address)
        self.jobs[job_id].remaining = left
        self.jobs[job_id].opened_at = block.timestamp
        log JobReassigned(job_id=job_id, failed_provider=provider, round=round + 1, remaining=left)
    else:
        refund: uint256 = self.jobs[job_id].deposit
        self.jobs[job_id].deposit = 0
        self.jobs[job_id].state = FAILED
        self.balances[job.owner] += refund
        log JobClosed(job_id=job_id, state=FAILED, provider_paid=paid, refund=refund)


@external
def expire(job_id: uint256):
    """Anyone may finish a job that ran its course or was never assigned in time."""
    job: Job = self.jobs[job_id]
    paid: uint256 = 0
    state: uint256 = 0
    if job.state == OPEN:
        # Verify nobody assigned it within ASSIGN_TIMEOUT
        assert block.timestamp >= job.opened_at + ASSIGN_TIMEOUT, "assignment window open"
        state = EXPIRED
    elif job.state == ASSIGNED:
        # Verify the paid time is over
        assert block.timestamp >= job.started + job.remaining, "job still running"
        paid = self._settle_provider(job_id)
        state = DONE
    else:
        raise "job finished"
    refund: uint256 = self.jobs[job_id].deposit
    self.jobs[job_id].deposit = 0
    self.jobs[job_id].state = state
    if refund > 0:
        self.balances[job.owner] += refund
    log JobClosed(job_id=job_id, state=state, provider_paid=paid, refund=refund)


@external
@nonreentrant
def withdraw() -> uint256:
    """Pull credited payouts (provider earnings, refunds after failure or expiry)."""
    amount: uint256 = self.balances[msg.sender]
    assert amount > 0, "nothing to withdraw"
    self.balances[msg.sender] = 0
    log Withdrawn(account=msg.sender, amount=amount)
    raw_call(msg.sender, b"", value=amount)
    return amount

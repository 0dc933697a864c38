# pragma version ~=0.4.3
"""
@title Kaisar checker license (ERC-721)
@notice One token = the right to run one checker. Sold by the admin at a fixed
        price up to a maximum supply; the admin may also mint (devnet genesis).
"""

from ethereum.ercs import IERC165
from ethereum.ercs import IERC721

implements: IERC165
implements: IERC721


interface ERC721Receiver:
    def onERC721Received(
        _operator: address, _from: address, _tokenId: uint256, _data: Bytes[1024]
    ) -> bytes4: nonpayable


event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    tokenId: indexed(uint256)

event Approval:
    owner: indexed(address)
    approved: indexed(address)
    tokenId: indexed(uint256)

event ApprovalForAll:
    owner: indexed(address)
    operator: indexed(address)
    approved: bool

event PriceSet:
    price: uint256

event Withdrawn:
    receiver: indexed(address)
    amount: uint256


SUPPORTED_INTERFACES: constant(bytes4[2]) = [
    0x01ffc9a7,  # ERC-165
    0x80ac58cd,  # ERC-721
]
RECEIVED_SELECTOR: constant(bytes4) = method_id(
    "onERC721Received(address,address,uint256,bytes)", output_type=bytes4
)

admin: public(address)
price: public(uint256)
max_supply: public(uint256)
total_supply: public(uint256)

idToOwner: HashMap[uint256, address]
idToApprovals: HashMap[uint256, address]
ownerToNFTokenCount: HashMap[address, uint256]
ownerToOperators: HashMap[address, HashMap[address, bool]]


@deploy
def __init__(_price: uint256, _max_supply: uint256):
    self.admin = msg.sender
    self.price = _price
    self.max_supply = _max_supply


# ERC-165 / ERC-721 views -----------------------------------------------------

@view
@external
def supportsInterface(interface_id: bytes4) -> bool:
    return interface_id in SUPPORTED_INTERFACES


@view
@external
def balanceOf(_owner: address) -> uint256:
    assert _owner != empty(address), "zero address"
    return self.ownerToNFTokenCount[_owner]


@view
@external
def ownerOf(_tokenId: uint256) -> address:
    owner: address = self.idToOwner[_tokenId]
    assert owner != empty(address), "no such token"
    return owner


@view
@external
def getApproved(_tokenId: uint256) -> address:
    assert self.idToOwner[_tokenId] != empty(address), "no such token"
    return self.idToApprovals[_tokenId]


@view
@external
def isApprovedForAll(_owner: address, _operator: address) -> bool:
    return self.ownerToOperators[_owner][_operator]


# transfers ---------------------------------------------------------------------

@view
@internal
def _isApprovedOrOwner(_spender: address, _tokenId: uint256) -> bool:
    owner: address = self.idToOwner[_tokenId]
    return (
        owner == _spender
        or self.idToApprovals[_tokenId] == _spender
        or self.ownerToOperators[owner][_spender]
    )


@internal
def _transferFrom(_from: address, _to: address, _tokenId: uint256, _sender: address):
    # Check the token exists and belongs to _from
    assert self.idToOwner[_tokenId] == _from, "not owner"
    # Check the caller may move it
    assert self._isApprovedOrOwner(_sender, _tokenId), "not approved"
    # Never burn by accident
    assert _to != empty(address), "zero address"
    self.idToApprovals[_tokenId] = empty(address)
    self.ownerToNFTokenCount[_from] -= 1
    self.ownerToNFTokenCount[_to] += 1
    self.idToOwner[_tokenId] = _to
    log Transfer(sender=_from, receiver=_to, tokenId=_tokenId)


@external
@payable
def transferFrom(_from: address, _to: address, _tokenId: uint256):
    assert msg.value == 0, "no value"
    self._transferFrom(_from, _to, _tokenId, msg.sender)


@external
@payable
def safeTransferFrom(_from: address, _to: address, _tokenId: uint256, _data: Bytes[1024] = b""):
    assert msg.value == 0, "no value"
    self._transferFrom(_from, _to, _tokenId, msg.sender)
    if _to.is_contract:
        ret: bytes4 = extcall ERC721Receiver(_to).onERC721Received(msg.sender, _from, _tokenId, _data)
        assert ret == RECEIVED_SELECTOR, "receiver rejected token"


@external
@payable
def approve(_approved: address, _tokenId: uint256):
    assert msg.value == 0, "no value"
    owner: address = self.idToOwner[_tokenId]
    assert owner != empty(address), "no such token"
    assert _approved != owner, "approve to owner"
    assert owner == msg.sender or self.ownerToOperators[owner][msg.sender], "not owner nor operator"
    self.idToApprovals[_tokenId] = _approved
    log Approval(owner=owner, approved=_approved, tokenId=_tokenId)


@external
def setApprovalForAll(_operator: address, _approved: bool):
    assert _operator != msg.sender, "operator is caller"
    self.ownerToOperators[msg.sender][_operator] = _approved
    log ApprovalForAll(owner=msg.sender, operator=_operator, approved=_approved)


# sale ------------------------------------------------------------------------------

@internal
def _mint(_to: address) -> uint256:
    # Supply is capped
    assert self.total_supply < self.max_supply, "sold out"
    token_id: uint256 = self.total_supply + 1
    self.total_supply = token_id
    self.idToOwner[token_id] = _to
    self.ownerToNFTokenCount[_to] += 1
    log Transfer(sender=empty(address), receiver=_to, tokenId=token_id)
    return token_id


@external
@payable
def buy() -> uint256:
    # Pay exactly the current price
    assert msg.value == self.price, "wrong price"
    return self._mint(msg.sender)


@external
def admin_mint(_to: address) -> uint256:
    assert msg.sender == self.admin, "admin only"
    assert _to != empty(address), "zero address"
    return self._mint(_to)


@external
def set_price(_price: uint256):
    assert msg.sender == self.admin, "admin only"
    self.price = _price
    log PriceSet(price=_price)


@external
@nonreentrant
def withdraw(_to: address):
    assert msg.sender == self.admin, "admin only"
    amount: uint256 = self.balance
    assert amount > 0, "nothing to withdraw"
    raw_call(_to, b"", value=amount)
    log Withdrawn(receiver=_to, amount=amount)

"""License NFT: ERC-721 core, sale, admin functions; every revert path."""

import pytest
from web3.logs import DISCARD

pytest.register_assert_rewrite("chain_fixtures")
from chain_fixtures import ETHER, PARAMS, ident, reverts  # noqa: E402

pytest_plugins = ["chain_fixtures"]


def _buy(world, who):
    r = world.h.tx(who, world.license.functions.buy(), value=PARAMS.license_price)
    return world.license.events.Transfer().process_receipt(r, errors=DISCARD)[0]["args"]["tokenId"]


def test_sale_and_views(world):
    L, h, buyer = world.license, world.h, world.owner
    before = h.call(L.functions.total_supply())
    token = _buy(world, buyer)
    assert token == before + 1
    assert h.call(L.functions.ownerOf(token)) == buyer.address
    assert h.call(L.functions.balanceOf(buyer.address)) == 1
    assert h.call(L.functions.price()) == PARAMS.license_price
    assert h.call(L.functions.max_supply()) == PARAMS.license_supply
    assert h.call(L.functions.admin()) == world.admin.address
    assert h.call(L.functions.supportsInterface(bytes.fromhex("80ac58cd")))
    assert h.call(L.functions.supportsInterface(bytes.fromhex("01ffc9a7")))
    assert not h.call(L.functions.supportsInterface(bytes.fromhex("deadbeef")))


def test_buy_wrong_price_and_sold_out(world):
    L, h = world.license, world.h
    with reverts("wrong price"):
        h.tx(world.owner, L.functions.buy(), value=PARAMS.license_price - 1)
    for _ in range(PARAMS.license_supply - h.call(L.functions.total_supply())):
        h.tx(world.admin, L.functions.admin_mint(world.owner.address))
    with reverts("sold out"):
        h.tx(world.owner, L.functions.buy(), value=PARAMS.license_price)


def test_views_revert_on_missing(world):
    L, h = world.license, world.h
    with reverts("no such token"):
        h.call(L.functions.ownerOf(999))
    with reverts("no such token"):
        h.call(L.functions.getApproved(999))
    with reverts("zero address"):
        h.call(L.functions.balanceOf("0x" + "00" * 20))


def test_transfer_approve_operator(world):
    L, h = world.license, world.h
    a, b, c = world.owner, world.outsider, world.providers[0]
    token = _buy(world, a)
    with reverts("not approved"):
        h.tx(b, L.functions.transferFrom(a.address, b.address, token))
    with reverts("not owner"):
        h.tx(a, L.functions.transferFrom(b.address, a.address, token))
    with reverts("zero address"):
        h.tx(a, L.functions.transferFrom(a.address, "0x" + "00" * 20, token))
    with reverts("no value"):
        h.tx(a, L.functions.transferFrom(a.address, b.address, token), value=1)
    # approve one token
    with reverts("approve to owner"):
        h.tx(a, L.functions.approve(a.address, token))
    with reverts("not owner nor operator"):
        h.tx(b, L.functions.approve(b.address, token))
    with reverts("no such token"):
        h.tx(a, L.functions.approve(b.address, 999))
    with reverts("no value"):
        h.tx(a, L.functions.approve(b.address, token), value=1)
    r = h.tx(a, L.functions.approve(b.address, token))
    assert (
        L.events.Approval().process_receipt(r, errors=DISCARD)[0]["args"]["approved"] == b.address
    )
    assert h.call(L.functions.getApproved(token)) == b.address
    r = h.tx(b, L.functions.transferFrom(a.address, c.address, token))
    ev = L.events.Transfer().process_receipt(r, errors=DISCARD)[0]["args"]
    assert (ev["sender"], ev["receiver"], ev["tokenId"]) == (a.address, c.address, token)
    assert h.call(L.functions.getApproved(token)) == "0x" + "00" * 20  # cleared on transfer
    # operator for all
    with reverts("operator is caller"):
        h.tx(c, L.functions.setApprovalForAll(c.address, True))
    h.tx(c, L.functions.setApprovalForAll(a.address, True))
    assert h.call(L.functions.isApprovedForAll(c.address, a.address))
    h.tx(a, L.functions.approve(b.address, token))  # operator may approve
    h.tx(a, L.functions.transferFrom(c.address, a.address, token))
    h.tx(c, L.functions.setApprovalForAll(a.address, False))
    assert not h.call(L.functions.isApprovedForAll(c.address, a.address))
    assert h.call(L.functions.ownerOf(token)) == a.address


def test_safe_transfer_to_eoa_and_contracts(world):
    L, h, a = world.license, world.h, world.owner
    token = _buy(world, a)
    good = h.deploy(a, "test_Receiver", True)
    bad = h.deploy(a, "test_Receiver", False)
    with reverts("receiver rejected token"):
        h.tx(a, L.functions.safeTransferFrom(a.address, bad, token, b""))
    with reverts("no value"):
        h.tx(a, L.functions.safeTransferFrom(a.address, good, token, b""), value=1)
    # a contract without onERC721Received (the License itself) cannot receive
    with reverts(""):
        h.tx(a, L.functions.safeTransferFrom(a.address, world.dep.license, token, b""))
    h.tx(a, L.functions.safeTransferFrom(a.address, good, token, b"hello"))
    assert h.call(L.functions.ownerOf(token)) == good
    R = h.contract("test_Receiver", good)
    assert h.call(R.functions.last_data()) == b"hello"
    token2 = _buy(world, a)
    h.tx(a, L.functions.safeTransferFrom(a.address, world.outsider.address, token2))
    assert h.call(L.functions.ownerOf(token2)) == world.outsider.address


def test_admin_functions(world):
    L, h, admin = world.license, world.h, world.admin
    with reverts("admin only"):
        h.tx(world.owner, L.functions.set_price(5))
    with reverts("admin only"):
        h.tx(world.owner, L.functions.admin_mint(world.owner.address))
    with reverts("zero address"):
        h.tx(admin, L.functions.admin_mint("0x" + "00" * 20))
    with reverts("admin only"):
        h.tx(world.owner, L.functions.withdraw(world.owner.address))
    r = h.tx(admin, L.functions.set_price(ETHER))
    assert L.events.PriceSet().process_receipt(r, errors=DISCARD)[0]["args"]["price"] == ETHER
    _buy_at = h.tx(world.owner, L.functions.buy(), value=ETHER)
    assert _buy_at["status"] == 1
    treasury = ident("treasury").address
    held = h.balance(world.dep.license)
    assert held == 4 * PARAMS.license_price + ETHER
    h.tx(admin, L.functions.withdraw(treasury))
    assert h.balance(treasury) == held
    with reverts("nothing to withdraw"):
        h.tx(admin, L.functions.withdraw(treasury))

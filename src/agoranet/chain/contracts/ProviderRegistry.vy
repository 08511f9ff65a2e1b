# pragma version ~=0.4.3
"""
@title ProviderRegistry
@notice On-chain directory of agoranet providers: each address registers its
        endpoint URL and the hash of its signed offer; anyone can list them.
@dev Entries live in a dense index (swap-and-pop on removal), so a listing is
     `providerCount()` plus `providerAt(i)` or a page from `listProviders`.
"""

struct Provider:
    provider: address
    url: String[MAX_URL]
    offerHash: bytes32
    updatedAt: uint256

event ProviderRegistered:
    provider: indexed(address)
    url: String[MAX_URL]
    offerHash: bytes32

event ProviderUpdated:
    provider: indexed(address)
    url: String[MAX_URL]
    offerHash: bytes32

event ProviderDeregistered:
    provider: indexed(address)

MAX_URL: constant(uint256) = 256
MAX_PAGE: constant(uint256) = 100

providerCount: public(uint256)
_providers: HashMap[uint256, Provider]
_index: HashMap[address, uint256]  # 1-based position in _providers; 0 = absent


@external
def register(url: String[MAX_URL], offerHash: bytes32):
    """
    @notice Register the caller, or update its URL and offer hash.
    """
    assert len(url) != 0, "EmptyUrl"
    assert offerHash != empty(bytes32), "EmptyOfferHash"
    entry: Provider = Provider(
        provider=msg.sender, url=url, offerHash=offerHash, updatedAt=block.timestamp
    )
    position: uint256 = self._index[msg.sender]
    if position == 0:
        count: uint256 = self.providerCount
        self._providers[count] = entry
        self._index[msg.sender] = count + 1
        self.providerCount = count + 1
        log ProviderRegistered(provider=msg.sender, url=url, offerHash=offerHash)
    else:
        self._providers[position - 1] = entry
        log ProviderUpdated(provider=msg.sender, url=url, offerHash=offerHash)


@external
def deregister():
    """
    @notice Remove the caller from the registry.
    """
    position: uint256 = self._index[msg.sender]
    assert position != 0, "NotRegistered"
    last: uint256 = self.providerCount - 1
    if position - 1 != last:
        moved: Provider = self._providers[last]
        self._providers[position - 1] = moved
        self._index[moved.provider] = position
    self._providers[last] = empty(Provider)
    self._index[msg.sender] = 0
    self.providerCount = last
    log ProviderDeregistered(provider=msg.sender)


@external
@view
def isRegistered(provider: address) -> bool:
    return self._index[provider] != 0


@external
@view
def getProvider(provider: address) -> Provider:
    position: uint256 = self._index[provider]
    assert position != 0, "NotRegistered"
    return self._providers[position - 1]


@external
@view
def providerAt(index: uint256) -> Provider:
    assert index < self.providerCount, "IndexOutOfRange"
    return self._providers[index]


@external
@view
def listProviders(start: uint256, limit: uint256) -> DynArray[Provider, MAX_PAGE]:
    """
    @notice Up to `limit` (at most MAX_PAGE) entries from index `start`.
    """
    page: DynArray[Provider, MAX_PAGE] = []
    count: uint256 = self.providerCount
    if start >= count:
        return page
    n: uint256 = min(min(limit, MAX_PAGE), count - start)
    for i: uint256 in range(n, bound=MAX_PAGE):
        page.append(self._providers[start + i])
    return page

// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// What the oracle reads of the bridge: its committee and its EIP-712 domain.
interface ICommitteeSource {
    function committeeHash() external view returns (bytes32);
    function previousCommitteeHash() external view returns (bytes32);
    function previousValidUntil() external view returns (uint64);
    function domainSeparator() external view returns (bytes32);
}

/// @title Committee-attested prices: the median of a quorum of signed reports, with a breaker.
/// @notice Design: ../shared/DESIGN.md, "Prices, margin and liquidation".  Oracle integrity is the
/// margin engine's main attack surface: one lying attester must not move the price at all.
///
/// Each member of the bridge's committee reads its price source itself and signs a PRICE_REPORT
/// (the bridge's EIP-712 `Message`, under the BRIDGE's domain: the bridge is the verifying
/// contract, so a report is signed once and is worthless for another bridge or chain):
///     version 1, kind PRICE_REPORT (4), destChainId = this chain, asset = the asset,
///     amount = the price (USD, 8 decimals, per whole unit), nonce = the observation time
///     (unix seconds), expiry, payloadHash = 0.
/// `postPrices` takes one report per member, each with its own signature, packed as the bridge's
/// quorum entries (66 bytes: index (1) || r (32) || s (32) || v (1)), ONE ENTRY PER REPORT in the
/// reports' order, indices strictly ascending (distinct members), at least M reports.  The
/// committee is the bridge's current one, or the previous one inside its grace window, passed
/// packed as the bridge takes it (epoch (8) || threshold (1) || signers (20 each)).
///
/// Every report must be fresh (`block.timestamp - maxAge <= nonce <= block.timestamp`), unexpired
/// and newer than the stored price (a replay does nothing).  The price is the median of all the
/// reports (the lower middle for an even count), and it is accepted only if at least M of the
/// reports, neighbours in sorted order, lie within `maxSpreadBps` of it (max - min <= spread x
/// median): a quorum agrees.  As M >= ceil(2N/3), any such M reports hold the median, and liars
/// (at most N - M, a minority of any M) can neither move the median out of the honest reports'
/// range nor stop a post: their reports are outliers the quorum rule leaves aside.  The stored
/// time is the oldest report's.
///
/// A median more than `breakerStepBps` away from the stored price trips the asset's breaker: the
/// price stays, `BreakerTripped` is emitted (the call does not revert, so the trip is recorded),
/// and `postPrices` refuses the asset until `clearBreaker`: ONE PRICE_REPORT signed by a quorum
/// of the current committee (the bridge's quorum rules), payloadHash keccak256("CLEAR_BREAKER"),
/// amount the new reference price, nonce its time (newer than the stored one, not in the
/// future), sourceIndex the number of the trip it clears (`trips(asset)`, so a clear signed for
/// one trip cannot clear a later one); it acts once by its id.  No owner, no admin function.
contract PriceOracle {
    /// The bridge's message struct (EIP-712 type `Message`), field for field.
    struct Message {
        uint8 version;
        uint8 kind;
        uint64 sourceChainId;
        bytes32 sourceTx;
        uint32 sourceIndex;
        uint64 destChainId;
        address account;
        address asset;
        uint256 amount;
        uint64 nonce;
        uint64 expiry;
        bytes32 payloadHash;
    }

    /// One slot per asset.
    struct Feed {
        uint128 price; // USD, 8 decimals; 0: none yet
        uint64 time; // the observation time of the price (the oldest report's)
        bool tripped;
        uint32 trips; // breaker trips so far
    }

    uint8 public constant MESSAGE_VERSION = 1;
    uint8 public constant KIND_PRICE_REPORT = 4;
    uint8 public constant PRICE_DECIMALS = 8;
    bytes32 public constant CLEAR_BREAKER = keccak256("CLEAR_BREAKER");

    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant MESSAGE_TYPEHASH = keccak256(
        "Message(uint8 version,uint8 kind,uint64 sourceChainId,bytes32 sourceTx,uint32 sourceIndex,uint64 destChainId,address account,address asset,uint256 amount,uint64 nonce,uint64 expiry,bytes32 payloadHash)"
    );
    bytes32 private constant NAME_HASH = keccak256("CollateralBridge");
    bytes32 private constant VERSION_HASH = keccak256("1");
    uint256 private constant HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    uint256 private constant ENTRY = 66; // bytes per packed signature entry
    uint256 private constant HEAD = 9; // packed committee: epoch (8) || threshold (1), then the signers
    uint256 private constant BPS = 10_000;

    ICommitteeSource public immutable bridge;
    uint256 public immutable maxAge; // seconds a report stays fresh
    uint256 public immutable maxSpreadBps; // the most a quorum of reports may spread, of the median
    uint256 public immutable breakerStepBps; // the largest move from the stored price that does not trip
    uint256 private immutable deployChainId;
    bytes32 private immutable cachedDomainSeparator;

    mapping(address asset => Feed) private feeds;
    /// CLEAR_BREAKER messages that acted, by id.
    mapping(bytes32 id => bool) public consumed;

    event PriceUpdated(address indexed asset, uint256 price, uint64 time, uint256 reporters);
    event BreakerTripped(address indexed asset, uint256 last, uint256 proposed, uint32 trip);
    event BreakerCleared(address indexed asset, bytes32 indexed id, uint256 price, uint64 time, uint32 trip);

    // Committee and signatures (as the bridge names them).
    error UnknownCommittee();
    error CommitteeExpired();
    error QuorumMalformed();
    error NotEnoughSignatures();
    error IndicesNotAscending();
    error IndexOutOfRange();
    error HighS();
    error BadV();
    error ZeroRecovered();
    error WrongSigner();
    // Reports.
    error NotEnoughReports();
    error WrongVersion();
    error WrongKind();
    error WrongChain();
    error WrongAsset();
    error PayloadMismatch();
    error ZeroAmount();
    error PriceOutOfRange();
    error MessageExpired();
    error Stale();
    error NotNewer();
    error PricesDisagree();
    // Breaker.
    error BreakerIsTripped();
    error NotTripped();
    error WrongTrip();
    error AlreadyConsumed();
    error BadConfig();

    /// @param bridge_ the CollateralBridge whose committee signs the reports (and whose domain they use).
    /// @param maxAge_ seconds a report stays fresh (1 s to 1 day).
    /// @param maxSpreadBps_ how far a quorum of reports may spread, in bps of the median (<= 10,000).
    /// @param breakerStepBps_ a median further than this from the stored price trips the breaker
    ///        (1 to 1,000,000 bps).
    constructor(address bridge_, uint256 maxAge_, uint256 maxSpreadBps_, uint256 breakerStepBps_) {
        if (bridge_.code.length == 0) revert BadConfig();
        if (maxAge_ == 0 || maxAge_ > 1 days || maxSpreadBps_ > BPS || breakerStepBps_ == 0 || breakerStepBps_ > 100 * BPS) {
            revert BadConfig();
        }
        bridge = ICommitteeSource(bridge_);
        maxAge = maxAge_;
        maxSpreadBps = maxSpreadBps_;
        breakerStepBps = breakerStepBps_;
        deployChainId = block.chainid;
        cachedDomainSeparator = _buildDomainSeparator(bridge_);
        // The bridge's own domain, so a report is signed once for both.
        if (ICommitteeSource(bridge_).domainSeparator() != cachedDomainSeparator) revert BadConfig();
    }

    /// @notice Post `asset`'s price from one report per member of the bridge's committee.
    /// @param reports PRICE_REPORTs for `asset`, at least M, in the order of `sigs`.
    /// @param committee the bridge's current committee, or the previous within its grace, packed.
    /// @param sigs one 66-byte entry per report (index || r || s || v), indices strictly ascending.
    function postPrices(address asset, Message[] calldata reports, bytes calldata committee, bytes calldata sigs) external {
        Feed memory feed = feeds[asset];
        if (feed.tripped) revert BreakerIsTripped();
        if (sigs.length != reports.length * ENTRY) revert QuorumMalformed();
        _checkCommittee(committee, true);
        // `committee` hashed to one the bridge accepted: HEAD + 20 N bytes, M >= ceil(2N/3).
        uint256 threshold = uint8(committee[8]);
        if (reports.length < threshold) revert NotEnoughReports();
        (uint256[] memory prices, uint256 oldest) = _readReports(asset, reports, committee, _offset(sigs), feed.time);
        _update(asset, feed, _agreedMedian(prices, threshold), oldest, reports.length);
    }

    /// @notice Clear `m.asset`'s tripped breaker and set its reference price, on a CLEAR_BREAKER
    /// message (kind PRICE_REPORT) signed by a quorum of the current committee.
    function clearBreaker(Message calldata m, bytes calldata committee, bytes calldata quorum) external {
        if (m.version != MESSAGE_VERSION) revert WrongVersion();
        if (m.kind != KIND_PRICE_REPORT) revert WrongKind();
        if (m.destChainId != block.chainid) revert WrongChain();
        if (m.payloadHash != CLEAR_BREAKER) revert PayloadMismatch();
        if (m.amount == 0) revert ZeroAmount();
        if (m.amount > type(uint128).max) revert PriceOutOfRange();
        if (block.timestamp >= m.expiry) revert MessageExpired();
        address asset = m.asset;
        Feed memory feed = feeds[asset];
        if (!feed.tripped) revert NotTripped();
        if (m.sourceIndex != feed.trips) revert WrongTrip();
        if (m.nonce > block.timestamp) revert Stale();
        if (m.nonce <= feed.time) revert NotNewer();
        _checkCommittee(committee, false);
        bytes32 id = _digest(domainSeparator(), m);
        if (consumed[id]) revert AlreadyConsumed();
        uint256 count = quorum.length / ENTRY;
        if (quorum.length != count * ENTRY) revert QuorumMalformed();
        if (count < uint8(committee[8])) revert NotEnoughSignatures();
        uint256 nextAllowed;
        for (uint256 i; i < count; ++i) {
            uint256 entry;
            assembly ("memory-safe") {
                entry := add(quorum.offset, mul(i, ENTRY))
            }
            nextAllowed = _checkEntry(id, committee, entry, nextAllowed) + 1;
        }
        consumed[id] = true;
        feeds[asset] = Feed(uint128(m.amount), m.nonce, false, feed.trips);
        emit BreakerCleared(asset, id, m.amount, m.nonce, feed.trips);
    }

    /// Store the median, or trip the breaker if it is more than a step from the stored price.
    function _update(address asset, Feed memory feed, uint256 median, uint256 oldest, uint256 reporters) private {
        if (feed.time != 0) {
            uint256 last = feed.price;
            uint256 step = median > last ? median - last : last - median;
            if (step * BPS > breakerStepBps * last) {
                uint32 trip = feed.trips + 1;
                feeds[asset] = Feed(feed.price, feed.time, true, trip);
                emit BreakerTripped(asset, last, median, trip);
                return;
            }
        }
        feeds[asset] = Feed(uint128(median), uint64(oldest), false, feed.trips);
        emit PriceUpdated(asset, median, uint64(oldest), reporters);
    }

    /// Every report's checks and its signature (the entries start at calldata offset `sigsAt`);
    /// the prices in the reports' order and the oldest report's time.
    function _readReports(address asset, Message[] calldata reports, bytes calldata committee, uint256 sigsAt, uint64 lastTime)
        private
        view
        returns (uint256[] memory prices, uint256 oldest)
    {
        bytes32 separator = domainSeparator();
        prices = new uint256[](reports.length);
        oldest = type(uint64).max;
        uint256 nextAllowed;
        for (uint256 i; i < reports.length; ++i) {
            Message calldata m = reports[i];
            _checkReport(m, asset, lastTime);
            prices[i] = m.amount;
            if (m.nonce < oldest) oldest = m.nonce;
            nextAllowed = _checkEntry(_digest(separator, m), committee, sigsAt + i * ENTRY, nextAllowed) + 1;
        }
    }

    /// The median (the lower middle for an even count), if `threshold` neighbouring prices in
    /// sorted order spread at most `maxSpreadBps` of it; else `PricesDisagree`.  With at most N
    /// prices and threshold >= ceil(2N/3), every such window holds the median's position.
    function _agreedMedian(uint256[] memory prices, uint256 threshold) private view returns (uint256 median) {
        _sort(prices);
        uint256 count = prices.length;
        median = prices[(count - 1) / 2];
        uint256 bound = maxSpreadBps * median;
        for (uint256 j; j + threshold <= count; ++j) {
            if ((prices[j + threshold - 1] - prices[j]) * BPS <= bound) return median;
        }
        revert PricesDisagree();
    }

    // --- views ---------------------------------------------------------------------------------

    /// @notice The asset's price (USD, 8 decimals; 0 before the first post), its observation time
    /// and whether its breaker is tripped (the price is then the last one before the trip).
    function price(address asset) external view returns (uint256, uint64, bool) {
        Feed memory feed = feeds[asset];
        return (feed.price, feed.time, feed.tripped);
    }

    /// @notice How many times the asset's breaker tripped: a CLEAR_BREAKER's sourceIndex.
    function trips(address asset) external view returns (uint32) {
        return feeds[asset].trips;
    }

    /// @notice The bridge's EIP-712 domain separator (the bridge is the verifying contract).
    function domainSeparator() public view returns (bytes32) {
        return block.chainid == deployChainId ? cachedDomainSeparator : _buildDomainSeparator(address(bridge));
    }

    /// @notice A message's id (EIP-712 digest under the bridge's domain), as the bridge computes it.
    function messageId(Message calldata m) external view returns (bytes32) {
        return _digest(domainSeparator(), m);
    }

    // --- internals -----------------------------------------------------------------------------

    function _checkReport(Message calldata m, address asset, uint64 lastTime) private view {
        if (m.version != MESSAGE_VERSION) revert WrongVersion();
        if (m.kind != KIND_PRICE_REPORT) revert WrongKind();
        if (m.destChainId != block.chainid) revert WrongChain();
        if (m.asset != asset) revert WrongAsset();
        if (m.payloadHash != bytes32(0)) revert PayloadMismatch(); // a CLEAR_BREAKER is no report
        uint256 amount = m.amount;
        if (amount == 0) revert ZeroAmount();
        if (amount > type(uint128).max) revert PriceOutOfRange();
        if (block.timestamp >= m.expiry) revert MessageExpired();
        uint256 observed = m.nonce;
        if (observed > block.timestamp || observed + maxAge < block.timestamp) revert Stale();
        if (observed <= lastTime) revert NotNewer();
    }

    /// A committee the bridge holds: its current one, or (`previousAllowed`) the replaced one
    /// while its grace window lasts.
    function _checkCommittee(bytes calldata committee, bool previousAllowed) private view {
        bytes32 h = keccak256(committee);
        if (h != bridge.committeeHash()) {
            if (!previousAllowed || h != bridge.previousCommitteeHash()) revert UnknownCommittee();
            if (block.timestamp >= bridge.previousValidUntil()) revert CommitteeExpired();
        }
    }

    /// The EIP-712 digest over the message's raw calldata words (as the bridge's `messageId`: a
    /// field with dirty high bits hashes to an id no member signed).
    function _digest(bytes32 separator, Message calldata m) private pure returns (bytes32 digest) {
        bytes32 typeHash = MESSAGE_TYPEHASH;
        assembly ("memory-safe") {
            let p := mload(0x40)
            mstore(p, typeHash)
            calldatacopy(add(p, 0x20), m, 0x180)
            let structHash := keccak256(p, 0x1a0)
            mstore(p, hex"1901")
            mstore(add(p, 2), separator)
            mstore(add(p, 34), structHash)
            digest := keccak256(p, 66)
        }
    }

    /// One packed signature entry at calldata offset `entry` over `digest`: its index must be at
    /// least `nextAllowed` and inside the committee, s low, v 27 or 28, and the one `ecrecover`
    /// must give the committee's signer at that index.  Returns the index.  Reads signers from the
    /// committee's raw calldata, sound because `_checkCommittee` matched it to a hash the bridge
    /// holds (so it is one the bridge's rules accepted).
    function _checkEntry(bytes32 digest, bytes calldata committee, uint256 entry, uint256 nextAllowed)
        private
        view
        returns (uint256 idx)
    {
        uint256 failure;
        assembly ("memory-safe") {
            let buf := mload(0x40)
            mstore(buf, digest)
            idx := byte(0, calldataload(entry))
            let s := calldataload(add(entry, 33))
            let v := byte(0, calldataload(add(entry, 65)))
            mstore(add(buf, 0x20), v)
            mstore(add(buf, 0x40), calldataload(add(entry, 1)))
            mstore(add(buf, 0x60), s)
            // No key recovered: the precompile returns nothing (its return size is read after it).
            pop(staticcall(gas(), 1, buf, 0x80, 0, 0x20))
            let n := div(sub(committee.length, HEAD), 20)
            let signer := shr(96, calldataload(add(add(committee.offset, HEAD), mul(idx, 20))))
            if or(
                or(lt(idx, nextAllowed), iszero(lt(idx, n))),
                or(or(gt(s, HALF_N), gt(sub(v, 27), 1)), or(iszero(returndatasize()), iszero(eq(mload(0), signer))))
            ) {
                // The first failed check in the order the errors are listed in.
                failure := 0x06
                if or(iszero(returndatasize()), iszero(mload(0))) { failure := 0x05 }
                if gt(sub(v, 27), 1) { failure := 0x04 }
                if gt(s, HALF_N) { failure := 0x03 }
                if iszero(lt(idx, n)) { failure := 0x02 }
                if lt(idx, nextAllowed) { failure := 0x01 }
            }
        }
        if (failure != 0) {
            if (failure == 0x01) revert IndicesNotAscending();
            if (failure == 0x02) revert IndexOutOfRange();
            if (failure == 0x03) revert HighS();
            if (failure == 0x04) revert BadV();
            if (failure == 0x05) revert ZeroRecovered();
            revert WrongSigner();
        }
    }

    function _offset(bytes calldata data) private pure returns (uint256 start) {
        assembly ("memory-safe") {
            start := data.offset
        }
    }

    /// Insertion sort, ascending (at most 255 reports: one per member).
    function _sort(uint256[] memory a) private pure {
        uint256 n = a.length;
        for (uint256 i = 1; i < n; ++i) {
            uint256 x = a[i];
            uint256 j = i;
            while (j > 0 && a[j - 1] > x) {
                a[j] = a[j - 1];
                --j;
            }
            a[j] = x;
        }
    }

    function _buildDomainSeparator(address verifyingContract) private view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, verifyingContract));
    }
}

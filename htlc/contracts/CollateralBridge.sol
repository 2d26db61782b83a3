// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title The margin bridge's EVM end: deposits in, releases out on a committee quorum only.
/// @notice Design: ../shared/DESIGN.md, "Attested messages and the committee".
///
/// Deposits credit the sender's margin account from the measured balance change; withdrawals are
/// requested by a transaction from the account's own key.  Funds leave only by `release`, on an
/// EIP-712 message of kind RELEASE signed by a quorum of the committee.
///
/// The margin book: `balanceOf[account][asset]`, a signed integer in the asset's base units, is
/// the same figure every replica of the ledger folds (its available balance plus its debt).
/// Deposits and credits add to it; a withdrawal request takes from it at once (the request is
/// held here, not only in the replicas), so a request beyond the free margin reverts and holds
/// nothing.  With a price oracle an account may borrow a listed asset (its balance goes negative)
/// while its health stays at least `initialBps`: health = haircut collateral value * 10,000 /
/// liabilities value, in USD with the oracle's 8 decimals, each asset's value rounded for the
/// bridge (collateral down, liabilities up).  Below `liquidationBps` anyone may `liquidate` the
/// account: every position (collateral and debt) moves to the caller's account, which must be
/// healthy after.  A price counts while it is at most `maxPriceAge` old and its breaker is not
/// tripped; without one, nothing that needs it happens (no borrow, no liquidation).  A withdrawal
/// request of an EVM asset that was not released by its expiry (`releaseTtl` after the request)
/// can be cancelled by anyone, which gives the margin back; a BTC request cannot (its payout may
/// be in flight on Bitcoin): a PAYOUT_DONE closes it.
///
/// The committee (epoch, signers sorted ascending, threshold M) is passed PACKED in calldata,
///     committee = epoch (8 bytes) || threshold (1) || signer_0 (20) || signer_1 (20) || ...
/// and stored only as keccak256(committee); a ROTATION's payload is that hash.  A quorum
/// is passed PACKED, to save calldata (about 1.5k gas per signature against `uint8[]` + `bytes[]`):
///     quorum = entry_0 || entry_1 || ...   each entry 66 bytes: index (1) || r (32) || s (32) || v (1)
/// with strictly ascending indices into `signers`, at least M entries, exactly one `ecrecover` each,
/// v in {27, 28}, s <= secp256k1n / 2, and a failed recovery (no address, or zero) refused.
///
/// Entry points and the only message kind each accepts: release RELEASE, creditDeposit
/// DEPOSIT_CREDIT, payoutDone PAYOUT_DONE, rotate ROTATION, unpause UNPAUSE.  There is no owner and no other admin function: deposits are open, the
/// guardians can only pause, and everything else needs a quorum message of the right kind.
/// A message is valid while block.timestamp < expiry.
///
/// A RELEASE pays out one open withdrawal request: its nonce is the request's nonce, and its
/// account, asset and amount must be the request's (`requestWithdrawal` stores their hash under
/// the nonce); the request is then deleted, so it is paid at most once whatever messages a
/// quorum signed for it, and never more than its account asked for.  `consumed` is not used
/// for releases (`released(nonce)` tells).  A ROTATION or an UNPAUSE acts once by its id (the
/// EIP-712 digest, `consumed`); an UNPAUSE's nonce is the number of the pause it lifts
/// (`pauses` after that pause), so one signed for an earlier pause cannot lift a later one.
/// Only listed assets are released, each under its per-window cap; BTC (`BTC_ASSET`) is never
/// listed: it is requested with a Bitcoin destination (`requestBtcWithdrawal`, whose commitment
/// also holds the destination's hash), paid on Bitcoin by the committee's custody, and the
/// request is closed by a PAYOUT_DONE quorum message once the payout is confirmed at depth.
///
/// Bitcoin-side facts enter only as quorum messages: a DEPOSIT_CREDIT credits `m.amount` sats of
/// BTC margin to `m.account` for the Bitcoin output `m.sourceTx:m.sourceIndex` (source chain
/// `BITCOIN_CHAIN_ID`), once per output whatever messages name it (`creditedOutput`).  The
/// deposit address of an account is derived from the committee's keys, the account and the
/// account's own public key, which the account registers here (`registerBtcKey`: the key must be
/// the sender's, checked by hashing it to the sender's address).
///
/// Over 400 lines as one contract on purpose: the checks of every entry point share the committee,
/// the pause state and the margin book.
contract CollateralBridge {
    /// The one message struct of every kind (EIP-712 type `Message`).
    struct Message {
        uint8 version; // 1
        uint8 kind; // see the KIND_ constants
        uint64 sourceChainId;
        bytes32 sourceTx; // tx hash, or txid on Bitcoin
        uint32 sourceIndex; // log index, or vout
        uint64 destChainId; // the chain that acts on it: block.chainid here
        address account;
        address asset; // zero: ETH; BTC_ASSET: bitcoin; else an ERC-20
        uint256 amount;
        uint64 nonce;
        uint64 expiry; // unix seconds; acts only strictly before
        bytes32 payloadHash; // kind-specific; ROTATION: the new committee's hash
    }

    /// One slot per listed asset, read by every deposit and release of it: the pause flag lives
    /// here too (a copy of `paused` in every listed asset's slot) so that neither reads a slot more.
    struct Cap {
        uint104 limit; // most that may be released per window (0: asset not listed)
        uint104 used; // released in `window`
        uint40 window; // block.timestamp / capWindow when `used` was last written
        bool paused; // == `paused` for every listed asset
    }

    /// The margin terms fixed at deployment (every replica folds with the same, from committee.json).
    struct MarginTerms {
        address oracle; // the PriceOracle (zero: no prices; no borrowing, no liquidation)
        uint256 releaseTtl; // seconds a RELEASE may act after its request; then it can be cancelled
        uint256 liquidationBps; // health below this: liquidatable
        uint256 initialBps; // health a borrow (or a withdrawal while owing) must leave
        uint256 maxPriceAge; // seconds a price counts
        uint256 minBtcWithdrawal; // sats
        uint16[] haircutBps; // per listed asset in the constructor's order, then BTC last
        uint8[] decimals; // likewise
    }

    struct Risk {
        uint16 haircutBps;
        uint8 decimals;
    }

    uint8 public constant MESSAGE_VERSION = 1;
    uint8 public constant KIND_DEPOSIT_CREDIT = 1;
    uint8 public constant KIND_RELEASE = 2;
    uint8 public constant KIND_PAYOUT_DONE = 3;
    uint8 public constant KIND_PRICE_REPORT = 4;
    uint8 public constant KIND_ROTATION = 5;
    uint8 public constant KIND_UNPAUSE = 6;
    uint8 public constant KIND_SNAPSHOT_ROOT = 7;
    /// Bitcoin as a message's source chain.
    uint64 public constant BITCOIN_CHAIN_ID = 0;
    /// BTC's asset sentinel: the last 20 bytes of keccak256("BTC").  Never paid out here.
    address public constant BTC_ASSET = address(uint160(uint256(keccak256("BTC"))));

    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant MESSAGE_TYPEHASH = keccak256(
        "Message(uint8 version,uint8 kind,uint64 sourceChainId,bytes32 sourceTx,uint32 sourceIndex,uint64 destChainId,address account,address asset,uint256 amount,uint64 nonce,uint64 expiry,bytes32 payloadHash)"
    );
    bytes32 private constant NAME_HASH = keccak256("CollateralBridge");
    bytes32 private constant VERSION_HASH = keccak256("1");
    uint256 private constant HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;
    uint256 private constant ENTRY = 66; // bytes per packed quorum entry
    uint256 private constant HEAD = 9; // packed committee: epoch (8) || threshold (1), then the signers
    uint256 private constant BPS = 10_000;
    /// `requests[n]` of a cancelled request (no keccak256 output is known to be this).
    bytes32 private constant CANCELLED = bytes32(uint256(1));
    /// Margin amounts stay below this, so value arithmetic never overflows with any oracle price.
    uint256 private constant MAX_POSITION = 2 ** 100;

    uint256 private immutable deployChainId;
    bytes32 private immutable cachedDomainSeparator;
    uint256 public immutable graceWindow; // seconds the previous committee stays valid after a rotation
    uint256 public immutable capWindow; // seconds per release-cap window
    IPriceSource public immutable oracle;
    uint256 public immutable releaseTtl;
    uint256 public immutable liquidationBps;
    uint256 public immutable initialBps;
    uint256 public immutable maxPriceAge;
    uint256 public immutable minBtcWithdrawal;

    bytes32 public committeeHash;
    bytes32 public previousCommitteeHash;
    uint64 public epoch;
    uint64 public previousValidUntil; // previousCommitteeHash is valid while block.timestamp < this
    bool public paused;
    uint64 public pauses; // pauses so far: an UNPAUSE names the one it lifts (same slot as `paused`)
    uint64 public depositNonce;
    uint64 public requestNonce;

    /// Open withdrawal requests: keccak256(abi.encode(account, asset, amount)) by request nonce,
    /// deleted when released (zero: never requested, or released; CANCELLED: cancelled).
    mapping(uint64 requestNonce => bytes32 commitment) public requests;
    /// ROTATION and UNPAUSE ids that acted (releases are tracked by `requests` instead).
    mapping(bytes32 id => bool) public consumed;
    /// Bitcoin outputs credited: keccak256(abi.encode(txid, vout)).
    mapping(bytes32 output => bool) private creditedOutputs;
    mapping(address asset => Cap) private assetCaps;
    address[] private listedAssets;
    mapping(address => bool) public isGuardian;
    /// The margin book: base units, negative when the account owes the asset.
    mapping(address account => mapping(address asset => int256)) public balanceOf;
    /// Open EVM withdrawal requests' expiry (unix seconds): cancellable from then on.
    mapping(uint64 requestNonce => uint64) public requestExpiry;
    mapping(address asset => Risk) private risks;
    /// The listed assets, then BTC: what an account's health sums over.
    address[] private marginAssets;

    bool private transient entered;

    event Deposited(address indexed account, address indexed asset, uint256 amount, uint64 depositNonce);
    event WithdrawalRequested(address indexed account, address indexed asset, uint256 amount, uint64 requestNonce);
    event Released(bytes32 indexed id, address indexed account, address indexed asset, uint256 amount);
    event Credited(bytes32 indexed id, address indexed account, address indexed asset, uint256 amount, bytes32 sourceTx, uint32 sourceIndex);
    event BtcKeyRegistered(address indexed account, bytes pubkey);
    event BtcDestination(uint64 indexed requestNonce, bytes destination);
    event PaidOut(bytes32 indexed id, uint64 indexed requestNonce, address indexed account, uint256 amount, bytes32 payoutTx, uint32 payoutIndex);
    event Rotated(bytes32 indexed id, uint64 indexed epoch, bytes32 committeeHash, bytes committee);
    event Paused(address indexed guardian);
    event Unpaused(bytes32 indexed id);
    event WithdrawalCancelled(uint64 indexed requestNonce, address indexed account, address indexed asset, uint256 amount);
    event Liquidated(address indexed account, address indexed liquidator, uint256 healthBps, uint256 collateralValue, uint256 liabilityValue);
    event Seized(address indexed account, address indexed liquidator, address indexed asset, int256 amount);

    // Committee and quorum.
    error EmptyCommittee();
    error CommitteeMalformed();
    error TooManySigners();
    error SignersNotSorted();
    error ZeroSigner();
    error ThresholdTooLow();
    error ThresholdTooHigh();
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
    error EpochNotNext();
    error PayloadMismatch();
    // Messages.
    error WrongKind();
    error WrongVersion();
    error WrongChain();
    error MessageExpired();
    error AlreadyConsumed();
    error NoSuchRequest();
    error RequestMismatch();
    error WrongPause();
    error ZeroAmount();
    error ZeroAccount();
    error CapExceeded();
    error IsPaused();
    error NotPaused();
    error NotGuardian();
    // Deposits and setup.
    error WrongAsset();
    error BadDestination();
    error NotYourKey();
    error ZeroAddressToken();
    error NotAContract();
    error AssetNotListed();
    error NothingReceived();
    error TransferFailed();
    error Reentrancy();
    error BadConfig();
    // Margin.
    error InsufficientMargin();
    error AmountTooLarge();
    error BelowMinimum();
    error NotExpired();
    error NoOracle();
    error NoPrice(address asset);
    error PriceStale(address asset);
    error PriceHalted(address asset);
    error NotLiquidatable();
    error SelfLiquidation();

    modifier nonReentrant() {
        if (entered) revert Reentrancy();
        entered = true;
        _;
        entered = false;
    }

    /// @param committee the first committee, packed (epoch 0, signers sorted ascending, threshold).
    /// @param guardians who may pause (each alone); at least one.
    /// @param grace seconds a replaced committee still signs releases (1 h if 0).
    /// @param assets the assets deposits and releases accept (zero: ETH), each with its
    ///        per-window release cap in `limits`; `window` is the cap window in seconds.
    /// @param terms the margin terms (see `MarginTerms`); the oracle, when set, must be deployed
    ///        right after (its address is predicted: the oracle reads this bridge's committee).
    constructor(
        bytes memory committee,
        address[] memory guardians,
        uint256 grace,
        address[] memory assets,
        uint256[] memory limits,
        uint256 window,
        MarginTerms memory terms
    ) {
        if (_checkCommittee(committee) != 0) revert BadConfig(); // the first epoch is 0
        if (guardians.length == 0 || assets.length != limits.length || window == 0 || window > 365 days) {
            revert BadConfig();
        }
        if (grace > 30 days) revert BadConfig();
        for (uint256 i; i < guardians.length; ++i) {
            if (guardians[i] == address(0)) revert BadConfig();
            isGuardian[guardians[i]] = true;
        }
        for (uint256 i; i < assets.length; ++i) {
            if (limits[i] == 0 || limits[i] > type(uint104).max || assets[i] == BTC_ASSET) revert BadConfig();
            if (assetCaps[assets[i]].limit != 0) revert BadConfig(); // listed twice
            assetCaps[assets[i]] = Cap(uint104(limits[i]), 0, 0, false);
            listedAssets.push(assets[i]);
        }
        _setTerms(assets, terms);
        oracle = IPriceSource(terms.oracle);
        releaseTtl = terms.releaseTtl;
        liquidationBps = terms.liquidationBps;
        initialBps = terms.initialBps;
        maxPriceAge = terms.maxPriceAge;
        minBtcWithdrawal = terms.minBtcWithdrawal;
        graceWindow = grace == 0 ? 1 hours : grace;
        capWindow = window;
        committeeHash = keccak256(committee);
        deployChainId = block.chainid;
        cachedDomainSeparator = _buildDomainSeparator();
    }

    // --- deposits and withdrawal requests (the account's own key) -----------------------------

    function depositETH() external payable nonReentrant {
        if (msg.value == 0) revert ZeroAmount();
        _checkDepositable(address(0));
        _deposited(address(0), msg.value);
    }

    /// @notice Credit what actually arrived (a fee-on-transfer token credits less than `amount`).
    function depositERC20(address token, uint256 amount) external nonReentrant {
        if (token == address(0)) revert ZeroAddressToken();
        // A call to an address without code "succeeds" returning nothing: a deposit without funds.
        if (token.code.length == 0) revert NotAContract();
        if (amount == 0) revert ZeroAmount();
        _checkDepositable(token);
        uint256 before = _balanceOf(token);
        _callToken(token, abi.encodeCall(IERC20Like.transferFrom, (msg.sender, address(this), amount)));
        uint256 received = _balanceOf(token) - before;
        if (received == 0) revert NothingReceived();
        _deposited(token, received);
    }

    /// @notice Ask the committee to release `amount` of `asset` from the sender's margin account.
    /// The amount is taken from the account now (beyond the balance only as a borrow its health
    /// allows); the replicas sign the RELEASE, which can pay nothing else.  Not released by
    /// `requestExpiry`, the request can be cancelled.  BTC is requested with
    /// `requestBtcWithdrawal` (it needs a destination on Bitcoin).
    function requestWithdrawal(address asset, uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        if (asset == BTC_ASSET) revert WrongAsset();
        if (assetCaps[asset].limit == 0) revert AssetNotListed();
        _debit(msg.sender, asset, amount);
        uint64 n = requestNonce++;
        requests[n] = keccak256(abi.encode(msg.sender, asset, amount));
        requestExpiry[n] = uint64(block.timestamp + releaseTtl);
        emit WithdrawalRequested(msg.sender, asset, amount, n);
    }

    /// @notice Ask the committee to pay `amount` sats of the sender's BTC margin (never borrowed)
    /// to the Bitcoin output script `destination`, a standard one (P2PKH, P2SH, P2WPKH, P2WSH or
    /// P2TR).  The request commits to the destination: the PAYOUT_DONE that closes it names its hash.
    function requestBtcWithdrawal(uint256 amount, bytes calldata destination) external {
        if (amount == 0) revert ZeroAmount();
        if (amount < minBtcWithdrawal) revert BelowMinimum();
        if (!_standardScript(destination)) revert BadDestination();
        _debit(msg.sender, BTC_ASSET, amount);
        uint64 n = requestNonce++;
        requests[n] = keccak256(abi.encode(msg.sender, BTC_ASSET, amount, keccak256(destination)));
        emit WithdrawalRequested(msg.sender, BTC_ASSET, amount, n);
        emit BtcDestination(n, destination);
    }

    /// @notice Give the margin of EVM withdrawal request `nonce` back to its account once its
    /// release can no longer act (from `requestExpiry`).  Anyone may call; the request closes.
    function cancelWithdrawal(uint64 nonce, address account, address asset, uint256 amount) external {
        bytes32 open = requests[nonce];
        if (open != keccak256(abi.encode(account, asset, amount))) {
            if (open == CANCELLED) revert AlreadyConsumed();
            if (open != 0) revert RequestMismatch();
            if (nonce < requestNonce) revert AlreadyConsumed();
            revert NoSuchRequest();
        }
        uint64 expiry = requestExpiry[nonce];
        if (expiry == 0) revert WrongAsset(); // a BTC request: closed by its PAYOUT_DONE only
        if (block.timestamp < expiry) revert NotExpired();
        requests[nonce] = CANCELLED; // not 0: `released` must not say a cancelled request was paid
        delete requestExpiry[nonce];
        balanceOf[account][asset] += int256(amount);
        emit WithdrawalCancelled(nonce, account, asset, amount);
    }

    /// @notice Liquidate `account`, whose health is below `liquidationBps`: every position it
    /// holds (collateral and debt, BTC included) moves to the caller's margin account, which must
    /// be at least `initialBps` healthy after.  Refused while paused.
    function liquidate(address account) external nonReentrant {
        if (paused) revert IsPaused();
        if (address(oracle) == address(0)) revert NoOracle();
        if (account == msg.sender) revert SelfLiquidation();
        (uint256 collateral, uint256 liabilities) = _values(account);
        if (liabilities == 0 || collateral * BPS >= liquidationBps * liabilities) revert NotLiquidatable();
        emit Liquidated(account, msg.sender, collateral * BPS / liabilities, collateral, liabilities);
        uint256 n = marginAssets.length;
        for (uint256 i; i < n; ++i) {
            address asset = marginAssets[i];
            int256 position = balanceOf[account][asset];
            if (position == 0) continue;
            balanceOf[account][asset] = 0;
            balanceOf[msg.sender][asset] += position;
            emit Seized(account, msg.sender, asset, position);
        }
        _requireHealthy(msg.sender);
    }

    /// One slot read: the asset's cap slot holds its listing and the pause flag.
    function _checkDepositable(address asset) private view {
        Cap memory cap = assetCaps[asset];
        if (cap.paused) revert IsPaused();
        if (cap.limit == 0) revert AssetNotListed();
    }

    function _deposited(address asset, uint256 amount) private {
        _credit(msg.sender, asset, amount);
        uint64 n = depositNonce++;
        emit Deposited(msg.sender, asset, amount, n);
    }

    /// @notice Register the sender's public key (64 bytes, uncompressed without the 0x04 prefix):
    /// the refund key of its Bitcoin deposit address.  Only the sender's own key hashes to it.
    function registerBtcKey(bytes calldata pubkey) external {
        if (pubkey.length != 64 || address(uint160(uint256(keccak256(pubkey)))) != msg.sender) revert NotYourKey();
        emit BtcKeyRegistered(msg.sender, pubkey);
    }

    // --- quorum messages ---------------------------------------------------------------------

    /// @notice Credit BTC margin for one Bitcoin deposit output on a DEPOSIT_CREDIT message signed
    /// by a quorum; an output is credited once, whatever messages name it.
    function creditDeposit(Message calldata m, bytes calldata committee, bytes calldata quorum) external nonReentrant {
        if (m.kind != KIND_DEPOSIT_CREDIT) revert WrongKind();
        if (m.amount == 0) revert ZeroAmount();
        if (m.account == address(0)) revert ZeroAccount();
        if (m.asset != BTC_ASSET) revert WrongAsset();
        if (m.sourceChainId != BITCOIN_CHAIN_ID) revert WrongChain();
        if (paused) revert IsPaused();
        bytes32 id = _checkMessage(m, committee, true);
        bytes32 output = keccak256(abi.encode(m.sourceTx, m.sourceIndex));
        if (creditedOutputs[output]) revert AlreadyConsumed();
        _verifyQuorum(id, committee, quorum);
        creditedOutputs[output] = true;
        _credit(m.account, BTC_ASSET, m.amount);
        emit Credited(id, m.account, BTC_ASSET, m.amount, m.sourceTx, m.sourceIndex);
    }

    /// @notice Pay the open withdrawal request `m.nonce` (`m.amount` of `m.asset` to `m.account`,
    /// as requested) on a RELEASE message signed by a quorum of the current committee, or of the
    /// previous one within its grace window; the request is closed.
    function release(Message calldata m, bytes calldata committee, bytes calldata quorum) external nonReentrant {
        if (m.kind != KIND_RELEASE) revert WrongKind();
        if (m.amount == 0) revert ZeroAmount();
        if (m.account == address(0)) revert ZeroAccount();
        address asset = m.asset;
        Cap memory cap = assetCaps[asset]; // one slot: the cap and the pause flag
        if (cap.paused) revert IsPaused();
        if (cap.limit == 0) revert AssetNotListed(); // BTC_ASSET among them: paid on Bitcoin
        bytes32 id = _checkMessage(m, committee, true);
        _closeRequest(m);
        _verifyQuorum(id, committee, quorum);
        _spendCap(asset, cap, m.amount);
        emit Released(id, m.account, asset, m.amount);
        _pay(asset, m.account, m.amount);
    }

    /// @notice Close the BTC withdrawal request `m.nonce` on a PAYOUT_DONE message signed by a
    /// quorum: the payout `m.sourceTx:m.sourceIndex` paid `m.amount` sats to the request's
    /// destination (`m.payloadHash` is its hash) and is confirmed at depth on Bitcoin.  Allowed
    /// while paused: it records what already happened.
    function payoutDone(Message calldata m, bytes calldata committee, bytes calldata quorum) external nonReentrant {
        if (m.kind != KIND_PAYOUT_DONE) revert WrongKind();
        if (m.amount == 0) revert ZeroAmount();
        if (m.account == address(0)) revert ZeroAccount();
        if (m.asset != BTC_ASSET) revert WrongAsset();
        if (m.sourceChainId != BITCOIN_CHAIN_ID) revert WrongChain();
        bytes32 id = _checkMessage(m, committee, true);
        uint64 n = m.nonce;
        bytes32 open = requests[n];
        if (open != keccak256(abi.encode(m.account, BTC_ASSET, m.amount, m.payloadHash))) {
            if (open == CANCELLED) revert AlreadyConsumed();
            if (open != 0) revert RequestMismatch();
            if (n < requestNonce) revert AlreadyConsumed();
            revert NoSuchRequest();
        }
        delete requests[n];
        _verifyQuorum(id, committee, quorum);
        emit PaidOut(id, n, m.account, m.amount, m.sourceTx, m.sourceIndex);
    }

    /// @notice Replace the committee on a ROTATION message signed by a quorum of the current one;
    /// `m.payloadHash` is the new committee's hash and its epoch is the current one plus one.  The
    /// replaced committee still signs releases for `graceWindow` seconds.  Allowed while paused.
    function rotate(Message calldata m, bytes calldata committee, bytes calldata quorum, bytes calldata newCommittee)
        external
        nonReentrant
    {
        if (m.kind != KIND_ROTATION) revert WrongKind();
        bytes32 id = _acceptOnce(m, committee, quorum);
        uint64 newEpoch = _checkCommittee(newCommittee);
        // `committee` hashed to the stored hash, so it is well formed.
        if (newEpoch != uint64(bytes8(committee[:8])) + 1) revert EpochNotNext();
        bytes32 newHash = keccak256(newCommittee);
        if (m.payloadHash != newHash) revert PayloadMismatch();
        previousCommitteeHash = committeeHash;
        previousValidUntil = uint64(block.timestamp + graceWindow);
        committeeHash = newHash;
        epoch = newEpoch;
        emit Rotated(id, newEpoch, newHash, newCommittee);
    }

    /// @notice Any one guardian stops deposits and releases; this is pause number `pauses`.
    function pause() external {
        if (!isGuardian[msg.sender]) revert NotGuardian();
        if (paused) revert IsPaused();
        paused = true;
        ++pauses;
        _setAssetsPaused(true);
        emit Paused(msg.sender);
    }

    /// @notice Only an UNPAUSE message for this pause (`m.nonce == pauses`) signed by a quorum of
    /// the current committee lifts it.
    function unpause(Message calldata m, bytes calldata committee, bytes calldata quorum) external nonReentrant {
        if (m.kind != KIND_UNPAUSE) revert WrongKind();
        if (!paused) revert NotPaused();
        if (m.nonce != pauses) revert WrongPause();
        bytes32 id = _acceptOnce(m, committee, quorum);
        paused = false;
        _setAssetsPaused(false);
        emit Unpaused(id);
    }

    // --- views ---------------------------------------------------------------------------------

    /// @notice An asset's release cap: `limit` per window (0: not listed), `used` in `window`.
    function caps(address asset) external view returns (uint256 limit, uint256 used, uint256 window) {
        Cap memory cap = assetCaps[asset];
        return (cap.limit, cap.used, cap.window);
    }

    function domainSeparator() public view returns (bytes32) {
        return block.chainid == deployChainId ? cachedDomainSeparator : _buildDomainSeparator();
    }

    /// @notice A message's id: its EIP-712 digest under this contract's domain.
    function messageId(Message calldata m) public view returns (bytes32) {
        bytes32 separator = domainSeparator();
        bytes32 typeHash = MESSAGE_TYPEHASH;
        bytes32 digest;
        assembly ("memory-safe") {
            // The struct hash over the raw calldata words: a field with dirty high bits hashes to
            // another id, which no quorum signed.
            let p := mload(0x40)
            mstore(p, typeHash)
            calldatacopy(add(p, 0x20), m, 0x180)
            let structHash := keccak256(p, 0x1a0)
            mstore(p, hex"1901")
            mstore(add(p, 2), separator)
            mstore(add(p, 34), structHash)
            digest := keccak256(p, 66)
        }
        return digest;
    }

    /// @notice Whether withdrawal request `nonce` was released here (false while open, and for
    /// one never made).
    function released(uint64 nonce) external view returns (bool) {
        return nonce < requestNonce && requests[nonce] == 0;
    }

    /// @notice Whether withdrawal request `nonce` was cancelled after its expiry (its margin given back).
    function cancelled(uint64 nonce) external view returns (bool) {
        return requests[nonce] == CANCELLED;
    }

    /// @notice `account`'s haircut collateral and liabilities (USD, 8 decimals) and its health in
    /// bps (type(uint256).max when it owes nothing); reverts when a price it needs does not count.
    function health(address account) external view returns (uint256 collateral, uint256 liabilities, uint256 healthBps) {
        (collateral, liabilities) = _values(account);
        healthBps = liabilities == 0 ? type(uint256).max : collateral * BPS / liabilities;
    }

    /// @notice The assets health sums over: the listed ones, then BTC; each with its haircut
    /// (bps) and decimals.
    function marginTerms() external view returns (address[] memory assets, uint16[] memory haircutBps, uint8[] memory decimals) {
        uint256 n = marginAssets.length;
        assets = marginAssets;
        haircutBps = new uint16[](n);
        decimals = new uint8[](n);
        for (uint256 i; i < n; ++i) {
            Risk memory r = risks[assets[i]];
            (haircutBps[i], decimals[i]) = (r.haircutBps, r.decimals);
        }
    }

    /// @notice Whether the Bitcoin output `txid:vout` was credited.
    function creditedOutput(bytes32 txid, uint32 vout) external view returns (bool) {
        return creditedOutputs[keccak256(abi.encode(txid, vout))];
    }

    /// @notice A packed committee's hash (no checks of its rules: see `_checkCommittee`).
    function hashCommittee(bytes calldata committee) external pure returns (bytes32) {
        return keccak256(committee);
    }

    // --- internals -----------------------------------------------------------------------------

    /// A ROTATION's or an UNPAUSE's checks: the message's, its quorum's, and that its id acts once.
    function _acceptOnce(Message calldata m, bytes calldata committee, bytes calldata quorum)
        private
        returns (bytes32 id)
    {
        id = _checkMessage(m, committee, false);
        if (consumed[id]) revert AlreadyConsumed();
        _verifyQuorum(id, committee, quorum);
        consumed[id] = true;
    }

    /// What every quorum message needs but its signatures: version, destination, expiry and a
    /// known committee.  Returns the message's id, which the quorum must have signed.
    function _checkMessage(Message calldata m, bytes calldata committee, bool previousAllowed)
        private
        view
        returns (bytes32 id)
    {
        if (m.version != MESSAGE_VERSION) revert WrongVersion();
        if (m.destChainId != block.chainid) revert WrongChain();
        if (block.timestamp >= m.expiry) revert MessageExpired();
        bytes32 h = keccak256(committee);
        if (h != committeeHash) {
            if (!previousAllowed || h != previousCommitteeHash) revert UnknownCommittee();
            if (block.timestamp >= previousValidUntil) revert CommitteeExpired();
        }
        id = messageId(m);
    }

    /// A RELEASE must name an open request exactly (nonce, account, asset, amount); it closes it,
    /// so no two messages ever pay one request.
    function _closeRequest(Message calldata m) private {
        uint64 n = m.nonce;
        bytes32 open = requests[n];
        if (open != keccak256(abi.encode(m.account, m.asset, m.amount))) {
            if (open == CANCELLED) revert AlreadyConsumed();
            if (open != 0) revert RequestMismatch();
            if (n < requestNonce) revert AlreadyConsumed(); // released before
            revert NoSuchRequest();
        }
        delete requests[n];
        delete requestExpiry[n];
    }

    /// The loop is assembly to keep each extra signature near its floor (ecrecover's 3,000 plus the
    /// entry's calldata): signer addresses are read from the packed committee's raw calldata, which
    /// is sound because `_checkMessage` matched those bytes against the stored hash first (so the
    /// committee is one `_checkCommittee` accepted: HEAD + 20 N bytes, N >= 1).
    function _verifyQuorum(bytes32 digest, bytes calldata committee, bytes calldata quorum) private view {
        uint256 threshold = uint8(committee[8]);
        uint256 count = quorum.length / ENTRY;
        if (quorum.length != count * ENTRY) revert QuorumMalformed();
        if (count < threshold) revert NotEnoughSignatures();
        uint256 failure;
        assembly ("memory-safe") {
            // The precompile's input beyond the free pointer (digest, v, r, s), its output in the
            // scratch space.
            let buf := mload(0x40)
            mstore(buf, digest)
            let vAt := add(buf, 0x20)
            let rAt := add(buf, 0x40)
            let sAt := add(buf, 0x60)
            let n := div(sub(committee.length, HEAD), 20)
            let base := add(committee.offset, HEAD)
            let nextAllowed := 0
            let p := quorum.offset
            for { let end := add(p, mul(count, ENTRY)) } lt(p, end) { p := add(p, ENTRY) } {
                let idx := byte(0, calldataload(p))
                let s := calldataload(add(p, 33))
                let v := byte(0, calldataload(add(p, 65)))
                mstore(vAt, v)
                mstore(rAt, calldataload(add(p, 1)))
                mstore(sAt, s)
                // The precompile returns nothing when no key recovers, leaving stale memory: its
                // return size is read after the call (Yul evaluates arguments right to left).
                pop(staticcall(gas(), 1, buf, 0x80, 0, 0x20))
                // One branch for all of an entry's checks (the recovery is made even for an entry
                // that fails another: it is refused all the same); which failed is sorted out below.
                if or(
                    or(lt(idx, nextAllowed), iszero(lt(idx, n))),
                    or(
                        or(gt(s, HALF_N), gt(sub(v, 27), 1)),
                        or(
                            iszero(returndatasize()),
                            iszero(eq(mload(0), shr(96, calldataload(add(base, mul(idx, 20))))))
                        )
                    )
                ) {
                    // The first failed check in the order the errors are listed in.
                    failure := 0x06
                    if or(iszero(returndatasize()), iszero(mload(0))) { failure := 0x05 }
                    if gt(sub(v, 27), 1) { failure := 0x04 }
                    if gt(s, HALF_N) { failure := 0x03 }
                    if iszero(lt(idx, n)) { failure := 0x02 }
                    if lt(idx, nextAllowed) { failure := 0x01 }
                    break
                }
                nextAllowed := add(idx, 1)
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

    /// A packed committee's rules: HEAD + 20 N bytes, 1 <= N <= 255, M >= ceil(2N/3) (a 2-of-5
    /// committee is refused), M <= N, signers strictly ascending and non-zero.  Returns its epoch.
    function _checkCommittee(bytes memory committee) private pure returns (uint64 committeeEpoch) {
        uint256 len = committee.length;
        if (len < HEAD || (len - HEAD) % 20 != 0) revert CommitteeMalformed();
        uint256 n = (len - HEAD) / 20;
        if (n == 0) revert EmptyCommittee();
        if (n > 255) revert TooManySigners(); // indices are one byte
        uint256 threshold;
        uint256 previous;
        assembly ("memory-safe") {
            let p := add(committee, 0x20)
            committeeEpoch := shr(192, mload(p))
            threshold := byte(8, mload(p))
            previous := shr(96, mload(add(p, HEAD)))
        }
        if (previous == 0) revert ZeroSigner();
        for (uint256 i = 1; i < n; ++i) {
            uint256 signer;
            assembly ("memory-safe") {
                signer := shr(96, mload(add(add(committee, add(0x20, HEAD)), mul(i, 20))))
            }
            if (signer <= previous) revert SignersNotSorted();
            previous = signer;
        }
        if (threshold > n) revert ThresholdTooHigh();
        if (3 * threshold < 2 * n) revert ThresholdTooLow();
    }

    function _setTerms(address[] memory assets, MarginTerms memory terms) private {
        uint256 n = assets.length;
        if (terms.haircutBps.length != n + 1 || terms.decimals.length != n + 1) revert BadConfig();
        if (terms.releaseTtl < 60 || terms.releaseTtl > 30 days) revert BadConfig();
        if (terms.oracle != address(0)) {
            // Liquidation below the borrowing level: a fresh borrow is never liquidatable at once.
            if (terms.liquidationBps < BPS || terms.initialBps < terms.liquidationBps || terms.initialBps > 100 * BPS) {
                revert BadConfig();
            }
            if (terms.maxPriceAge == 0 || terms.maxPriceAge > 7 days) revert BadConfig();
        }
        for (uint256 i; i <= n; ++i) {
            if (terms.haircutBps[i] >= BPS || terms.decimals[i] > 36) revert BadConfig();
            address asset = i < n ? assets[i] : BTC_ASSET;
            risks[asset] = Risk(terms.haircutBps[i], terms.decimals[i]);
            marginAssets.push(asset);
        }
    }

    function _credit(address account, address asset, uint256 amount) private {
        if (amount >= MAX_POSITION) revert AmountTooLarge();
        int256 position = balanceOf[account][asset] + int256(amount);
        if (position >= int256(MAX_POSITION)) revert AmountTooLarge();
        balanceOf[account][asset] = position;
    }

    /// Take `amount` from the account: beyond its balance only as a borrow of a listed asset, and
    /// only if the account owes nothing after or stays at least `initialBps` healthy.
    function _debit(address account, address asset, uint256 amount) private {
        if (amount >= MAX_POSITION) revert AmountTooLarge();
        int256 position = balanceOf[account][asset] - int256(amount);
        if (position <= -int256(MAX_POSITION)) revert AmountTooLarge();
        if (position < 0 && (asset == BTC_ASSET || address(oracle) == address(0))) revert InsufficientMargin();
        balanceOf[account][asset] = position;
        _requireHealthy(account);
    }

    /// Only an account that owes something needs prices: one that owes nothing withdraws what it
    /// has whatever the oracle says (a stale or halted price never traps margin).
    function _requireHealthy(address account) private view {
        if (!_owes(account)) return;
        (uint256 collateral, uint256 liabilities) = _values(account);
        if (liabilities != 0 && collateral * BPS < initialBps * liabilities) revert InsufficientMargin();
    }

    function _owes(address account) private view returns (bool) {
        uint256 n = marginAssets.length;
        for (uint256 i; i < n; ++i) {
            if (balanceOf[account][marginAssets[i]] < 0) return true;
        }
        return false;
    }

    /// Haircut collateral and liabilities of `account` in USD (8 decimals): each position valued
    /// on its own and rounded for the bridge (collateral down, liabilities up).  Only assets the
    /// account holds or owes need a price.
    function _values(address account) private view returns (uint256 collateral, uint256 liabilities) {
        uint256 n = marginAssets.length;
        for (uint256 i; i < n; ++i) {
            address asset = marginAssets[i];
            int256 position = balanceOf[account][asset];
            if (position == 0) continue;
            if (address(oracle) == address(0)) revert NoOracle();
            Risk memory r = risks[asset];
            uint256 price = _price(asset);
            uint256 unit = 10 ** r.decimals;
            if (position > 0) {
                collateral += uint256(position) * price * (BPS - r.haircutBps) / (unit * BPS);
            } else {
                uint256 owed = uint256(-position) * price;
                liabilities += (owed + unit - 1) / unit;
            }
        }
    }

    function _price(address asset) private view returns (uint256 price) {
        (uint256 p, uint64 time, bool tripped) = oracle.price(asset);
        if (p == 0) revert NoPrice(asset);
        if (tripped) revert PriceHalted(asset);
        if (time + maxPriceAge < block.timestamp) revert PriceStale(asset);
        return p;
    }

    /// The output scripts Bitcoin Core relays as standard destinations.
    function _standardScript(bytes calldata d) private pure returns (bool) {
        uint256 len = d.length;
        if (len == 25) return d[0] == 0x76 && d[1] == 0xa9 && d[2] == 0x14 && d[23] == 0x88 && d[24] == 0xac; // P2PKH
        if (len == 23) return d[0] == 0xa9 && d[1] == 0x14 && d[22] == 0x87; // P2SH
        if (len == 22) return d[0] == 0x00 && d[1] == 0x14; // P2WPKH
        if (len == 34) return (d[0] == 0x00 || d[0] == 0x51) && d[1] == 0x20; // P2WSH, P2TR
        return false;
    }

    function _spendCap(address asset, Cap memory cap, uint256 amount) private {
        uint40 window = uint40(block.timestamp / capWindow);
        uint256 used = cap.window == window ? cap.used : 0;
        if (amount > cap.limit || used + amount > cap.limit) revert CapExceeded();
        assetCaps[asset] = Cap(cap.limit, uint104(used + amount), window, false);
    }

    function _setAssetsPaused(bool value) private {
        uint256 n = listedAssets.length;
        for (uint256 i; i < n; ++i) {
            assetCaps[listedAssets[i]].paused = value;
        }
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    function _pay(address asset, address to, uint256 amount) private {
        if (asset == address(0)) {
            (bool ok,) = to.call{value: amount}("");
            if (!ok) revert TransferFailed();
        } else {
            _callToken(asset, abi.encodeCall(IERC20Like.transfer, (to, amount)));
        }
    }

    /// Accepts both ERC-20 styles: `true` returned, or nothing returned (USDT and the like).
    function _callToken(address token, bytes memory data) private {
        (bool ok, bytes memory ret) = token.call(data);
        if (!ok || (ret.length != 0 && (ret.length < 32 || abi.decode(ret, (uint256)) != 1))) {
            revert TransferFailed();
        }
    }

    function _balanceOf(address token) private view returns (uint256) {
        (bool ok, bytes memory ret) = token.staticcall(abi.encodeCall(IERC20Like.balanceOf, (address(this))));
        if (!ok || ret.length < 32) revert TransferFailed();
        return abi.decode(ret, (uint256));
    }
}

interface IPriceSource {
    function price(address asset) external view returns (uint256, uint64, bool);
}

interface IERC20Like {
    function transfer(address to, uint256 amount) external returns (bool);
    function transferFrom(address from, address to, uint256 amount) external returns (bool);
    function balanceOf(address owner) external view returns (uint256);
}

// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title Hash-time-locked contracts for ETH and any ERC-20, one contract for all swaps.
/// @notice Storage is one status slot per swap: claim and refund pass the swap's parameters
/// back in calldata and the contract re-derives the id from them, so nothing else needs to
/// be stored.  The id commits to every parameter plus the sender and a per-sender nonce,
/// which makes ids unique without asking the caller for a salt and lets the sender know
/// its id before the lock is mined.
contract HTLC {
    /// Parameters of one swap, in the order they are hashed into its id.
    struct Swap {
        address sender;
        address recipient;
        address token; // zero address: ETH
        uint256 amount;
        bytes32 hashlock; // sha256 of the 32-byte preimage
        uint256 expiry; // unix seconds: claim strictly before, refund at or after
        uint256 nonce; // the sender's lock counter when this swap was locked
    }

    enum Status {
        None,
        Locked,
        Claimed,
        Refunded
    }

    mapping(bytes32 id => Status) public swaps;
    mapping(address sender => uint256) public nonces;

    bool private transient entered;

    event Locked(
        bytes32 indexed id,
        address sender,
        address indexed recipient,
        address token,
        uint256 amount,
        bytes32 indexed hashlock,
        uint256 expiry,
        uint256 nonce
    );
    event Claimed(bytes32 indexed id, bytes32 preimage);
    event Refunded(bytes32 indexed id);

    error ZeroAmount();
    error ZeroRecipient();
    error ExpiryInPast();
    error AmountMismatch();
    error NotAContract();
    error TransferFailed();
    error FeeOnTransferToken();
    error UnknownSwap();
    error AlreadySettled();
    error Expired();
    error NotExpired();
    error PreimageNot32Bytes();
    error WrongPreimage();
    error Reentrancy();

    modifier nonReentrant() {
        if (entered) revert Reentrancy();
        entered = true;
        _;
        entered = false;
    }

    /// @notice Lock `amount` of `token` (zero: ETH, sent as msg.value) for `recipient`.
    function lock(address recipient, address token, uint256 amount, bytes32 hashlock, uint256 expiry)
        external
        payable
        nonReentrant
        returns (bytes32 id)
    {
        if (amount == 0) revert ZeroAmount();
        if (recipient == address(0)) revert ZeroRecipient();
        if (expiry <= block.timestamp) revert ExpiryInPast();
        if (msg.value != (token == address(0) ? amount : 0)) revert AmountMismatch();

        uint256 nonce;
        unchecked {
            nonce = nonces[msg.sender]++;
        }
        id = swapId(Swap(msg.sender, recipient, token, amount, hashlock, expiry, nonce));
        // Fresh per-sender nonce: the id cannot be in use, so no existence check is needed.
        swaps[id] = Status.Locked;
        emit Locked(id, msg.sender, recipient, token, amount, hashlock, expiry, nonce);

        if (token != address(0)) {
            // A call to an address without code "succeeds" with no return data, which would
            // pass for a token that returns nothing.
            if (token.code.length == 0) revert NotAContract();
            // Measure what actually arrived: a token that skims a fee would leave the swap
            // under-collateralised, so it is refused outright.
            uint256 before = _balanceOf(token);
            _callToken(token, abi.encodeCall(IERC20Minimal.transferFrom, (msg.sender, address(this), amount)));
            if (_balanceOf(token) != before + amount) revert FeeOnTransferToken();
        }
    }

    /// @notice Pay the swap to its recipient, whoever sends this (so a relayer can claim for
    /// an offline recipient).  Only before expiry and only with the 32-byte preimage.
    function claim(Swap calldata swap, bytes calldata preimage) external nonReentrant {
        bytes32 id = _settle(swap, Status.Claimed);
        if (block.timestamp >= swap.expiry) revert Expired();
        // A longer preimage would hash fine here but could not be used on a Bitcoin leg
        // guarded by OP_SIZE 32, so both chains enforce the same length.
        if (preimage.length != 32) revert PreimageNot32Bytes();
        if (sha256(preimage) != swap.hashlock) revert WrongPreimage();
        emit Claimed(id, bytes32(preimage));
        _pay(swap.token, swap.recipient, swap.amount);
    }

    /// @notice Return the swap to its sender, whoever sends this; only at or after expiry.
    function refund(Swap calldata swap) external nonReentrant {
        bytes32 id = _settle(swap, Status.Refunded);
        if (block.timestamp < swap.expiry) revert NotExpired();
        emit Refunded(id);
        _pay(swap.token, swap.sender, swap.amount);
    }

    /// @notice The id a swap with these parameters has (or would have).
    function swapId(Swap memory swap) public pure returns (bytes32) {
        return keccak256(abi.encode(swap));
    }

    /// Marks a locked swap settled; the caller's later checks revert the whole call if unmet.
    function _settle(Swap calldata swap, Status outcome) private returns (bytes32 id) {
        id = swapId(swap);
        Status status = swaps[id];
        if (status == Status.None) revert UnknownSwap();
        if (status != Status.Locked) revert AlreadySettled();
        swaps[id] = outcome;
    }

    function _pay(address token, address to, uint256 amount) private {
        if (token == address(0)) {
            (bool ok,) = to.call{value: amount}("");
            if (!ok) revert TransferFailed();
        } else {
            _callToken(token, abi.encodeCall(IERC20Minimal.transfer, (to, amount)));
        }
    }

    /// Calls a token and accepts both ERC-20 styles: `true` returned, or nothing returned
    /// (USDT and other pre-standard tokens).  `lock` has checked that the token has code.
    function _callToken(address token, bytes memory data) private {
        (bool ok, bytes memory ret) = token.call(data);
        if (!ok || (ret.length != 0 && (ret.length < 32 || abi.decode(ret, (uint256)) != 1))) {
            revert TransferFailed();
        }
    }

    function _balanceOf(address token) private view returns (uint256) {
        (bool ok, bytes memory ret) = token.staticcall(abi.encodeCall(IERC20Minimal.balanceOf, (address(this))));
        if (!ok || ret.length < 32) revert TransferFailed();
        return abi.decode(ret, (uint256));
    }
}

interface IERC20Minimal {
    function transfer(address to, uint256 amount) external returns (bool);
    function transferFrom(address from, address to, uint256 amount) external returns (bool);
    function balanceOf(address owner) external view returns (uint256);
}

// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title A Chainlink-style price feed for the devnet (AggregatorV3Interface's reads).
/// @notice Design: ../shared/DESIGN.md, "Prices, margin and liquidation": on the devnet every
/// attester reads its price source from one of these; `bridgectl devnet price BTC 95000` moves it.
/// Answers are USD with `decimals()` = 8 decimals per whole unit of the asset.  Only the deployer
/// sets the answer; each `setAnswer` is a new round, updated at the block's time.  Any answer is
/// taken (zero and negative too, to play a broken feed): the readers judge it.
contract MockAggregator {
    uint8 public constant decimals = 8;
    uint256 public constant version = 4;
    address public immutable owner;
    string public description;

    uint80 private round;
    int256 private answer;
    uint256 private updatedAt;

    event AnswerUpdated(int256 indexed current, uint256 indexed roundId, uint256 updatedAt);

    error NotOwner();
    error NoData();

    /// @param desc e.g. "BTC / USD"
    /// @param initial the first answer (none when 0).
    constructor(string memory desc, int256 initial) {
        owner = msg.sender;
        description = desc;
        if (initial != 0) _set(initial);
    }

    function setAnswer(int256 value) external {
        if (msg.sender != owner) revert NotOwner();
        _set(value);
    }

    function latestAnswer() external view returns (int256) {
        return answer;
    }

    function latestRound() external view returns (uint256) {
        return round;
    }

    function latestTimestamp() external view returns (uint256) {
        return updatedAt;
    }

    /// @notice As Chainlink's: (roundId, answer, startedAt, updatedAt, answeredInRound); all zero
    /// before the first answer.
    function latestRoundData()
        external
        view
        returns (uint80 roundId, int256 value, uint256 startedAt, uint256 updated, uint80 answeredInRound)
    {
        return (round, answer, updatedAt, updatedAt, round);
    }

    /// @notice Only the latest round is kept: an older round id has no data (as a pruned feed).
    function getRoundData(uint80 roundId)
        external
        view
        returns (uint80, int256 value, uint256 startedAt, uint256 updated, uint80 answeredInRound)
    {
        if (roundId == 0 || roundId != round) revert NoData();
        return (round, answer, updatedAt, updatedAt, round);
    }

    function _set(int256 value) private {
        uint80 next = round + 1;
        round = next;
        answer = value;
        updatedAt = block.timestamp;
        emit AnswerUpdated(value, next, block.timestamp);
    }
}

"""The edge's committed-offset bookkeeping behind ``kpistream_consumer_lag``: an answer that
was awaited across a rebalance must not stand for the partition's new ownership."""

from aiokafka import TopicPartition

from kpistream.stages.edge import CommittedOffsets

ORDERS_4 = TopicPartition("orders", 4)
SPEND_1 = TopicPartition("ad-spend", 1)


def test_a_commit_in_the_current_epoch_sets_the_lag() -> None:
    offsets = CommittedOffsets()
    offsets.record(offsets.epoch, {ORDERS_4: 900, SPEND_1: 40})
    assert offsets.lag(ORDERS_4, 1000) == 100
    assert offsets.lag(SPEND_1, 40) == 0
    assert offsets.unknown({ORDERS_4, SPEND_1}) == []


def test_a_commit_answered_after_a_rebalance_is_dropped() -> None:
    """Commit sent while the partition was ours, revoked and given back while it was in
    flight; meanwhile another worker committed to the end."""
    offsets = CommittedOffsets()
    started = offsets.epoch
    offsets.rebalanced([ORDERS_4])  # revoked
    offsets.rebalanced([])  # assigned again
    offsets.record(started, {ORDERS_4: 532})  # the stale answer arrives
    assert offsets.unknown({ORDERS_4}) == [ORDERS_4]  # so it is looked up again
    offsets.record(offsets.epoch, {ORDERS_4: 1800})
    assert offsets.lag(ORDERS_4, 1800) == 0


def test_revoked_partitions_are_forgotten_and_others_kept() -> None:
    offsets = CommittedOffsets()
    offsets.record(offsets.epoch, {ORDERS_4: 10, SPEND_1: 20})
    offsets.rebalanced([ORDERS_4])
    assert offsets.unknown({ORDERS_4, SPEND_1}) == [ORDERS_4]
    assert offsets.lag(SPEND_1, 25) == 5


def test_an_unknown_partition_counts_its_whole_log_as_lag() -> None:
    offsets = CommittedOffsets()
    assert offsets.lag(ORDERS_4, 77) == 77


def test_a_lookup_corrects_a_stale_offset_but_never_undoes_a_later_commit() -> None:
    offsets = CommittedOffsets()
    offsets.record(offsets.epoch, {SPEND_1: 831})  # this edge's last successful commit
    started = offsets.epoch
    offsets.looked_up(started, SPEND_1, 1000)  # the group committed to the end since
    assert offsets.lag(SPEND_1, 1000) == 0
    offsets.record(offsets.epoch, {ORDERS_4: 500})
    offsets.looked_up(offsets.epoch, ORDERS_4, 420)  # a lookup older than the commit
    assert offsets.lag(ORDERS_4, 500) == 0
    offsets.rebalanced([])
    offsets.looked_up(started, SPEND_1, 1200)  # answered across a rebalance: dropped
    assert offsets.lag(SPEND_1, 1200) == 200


def test_the_highest_committed_offset_outlives_rebalances() -> None:
    """What tells a topic deleted and created again (its log ends below it) after the
    rebalance the deletion causes, when Kafka may have dropped the group's offsets."""
    offsets = CommittedOffsets()
    started = offsets.epoch
    offsets.record(started, {ORDERS_4: 90})
    offsets.rebalanced([ORDERS_4])
    offsets.record(started, {SPEND_1: 7})  # committed, answered after the rebalance
    offsets.looked_up(offsets.epoch, ORDERS_4, 60)  # an earlier commit, looked up
    assert offsets.highest == {("orders", 4): 90, ("ad-spend", 1): 7}

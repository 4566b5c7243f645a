"""Unit tests of engine.room: batching, snapshots, history, conflation, epochs.

A fake subscriber records the complete websocket frames a room hands it; the tests parse
each frame with websockets' own frame parser and decode the payload with the codec.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.frames import Opcode

from engine.limits import WriteBudget
from engine.room import Hub, Room, RoomsFull, Subscriber
from protocol import JSON, MSGPACK, Comment, Joined, Likes, Viewers
from tests.conftest import RecordingSubscriber, bounded, expect, parse_frame, wait_for_condition

ROOM = "room-1"


FakeSubscriber = RecordingSubscriber


def make_room(
    *,
    history_size: int = 100,
    snapshot_size: int = 10,
    min_flush_interval: float = 0.0,
    slice_size: int = 512,
    write_limit: int = 1 << 20,
) -> Room:
    return Room(
        ROOM,
        history_size=history_size,
        snapshot_size=snapshot_size,
        min_flush_interval=min_flush_interval,
        loop=asyncio.get_running_loop(),
        slice_size=slice_size,
        write_limit=write_limit,
    )


def publish(room: Room, text: str = "hello", user: str = "u1") -> int:
    return room.publish_comment(user_id=user, name=user.upper(), text=text)


def join(
    room: Room, sub: FakeSubscriber, *, offset: int | None = None, epoch: str | None = None
) -> Joined:
    result = room.join(sub, offset=offset, epoch=epoch, rid="j")
    return expect(sub.codec.decode_server(result.payload(sub.codec)), Joined)


def comments_of(joined: Joined) -> list[int]:
    return [e.offset for e in joined.recent if isinstance(e, Comment)]


@bounded(5)
async def test_comments_published_in_one_loop_turn_leave_in_one_batch_frame() -> None:
    room = make_room()
    sub = FakeSubscriber()
    join(room, sub)
    offsets = [publish(room, f"c{i}") for i in range(3)]
    assert offsets == [1, 2, 3]
    await asyncio.sleep(0)
    assert len(sub.frames) == 1
    (batch,) = sub.batches()
    assert batch.room == ROOM
    assert [e.offset for e in batch.events if isinstance(e, Comment)] == [1, 2, 3]
    assert [e.text for e in batch.events if isinstance(e, Comment)] == ["c0", "c1", "c2"]
    assert room.flushed_offset == 3


@bounded(5)
async def test_a_quiet_room_sends_a_comment_after_one_loop_turn_not_synchronously() -> None:
    room = make_room()
    sub = FakeSubscriber()
    join(room, sub)
    publish(room)
    assert sub.frames == []  # publishing only schedules the flush
    await asyncio.sleep(0)
    assert sub.comment_offsets() == [1]


@bounded(5)
async def test_comment_carries_server_timestamp_user_and_epoch_based_id() -> None:
    room = make_room()
    sub = FakeSubscriber()
    join(room, sub)
    publish(room, "hi", user="bob")
    await asyncio.sleep(0)
    (batch,) = sub.batches()
    (event,) = batch.events
    comment = expect(event, Comment)
    assert (comment.user_id, comment.name, comment.text) == ("bob", "BOB", "hi")
    assert comment.id == f"{room.epoch}.1"
    assert abs(comment.ts - time.time() * 1000) < 5000  # unix milliseconds, server clock


@bounded(5)
async def test_min_flush_interval_spaces_frames_and_batches_what_arrives_meanwhile() -> None:
    interval = 0.1
    room = make_room(min_flush_interval=interval)
    sub = FakeSubscriber()
    join(room, sub)
    loop = asyncio.get_running_loop()
    publish(room)
    await asyncio.sleep(0)
    assert len(sub.frames) == 1  # the first frame leaves at once
    first_at = loop.time()
    publish(room)
    publish(room)
    await asyncio.sleep(0)
    assert len(sub.frames) == 1  # the second waits for the interval
    await wait_for_condition(lambda: len(sub.frames) == 2, timeout=2)
    assert loop.time() - first_at >= interval * 0.9
    assert [[expect(e, Comment).offset for e in b.events] for b in sub.batches()] == [[1], [2, 3]]


@bounded(5)
async def test_join_while_an_event_is_pending_gets_it_in_the_batch_not_the_snapshot() -> None:
    room = make_room()
    early = FakeSubscriber()
    join(room, early)
    publish(room, "flushed")
    await asyncio.sleep(0)
    publish(room, "pending")
    late = FakeSubscriber(codec=JSON)
    joined = join(room, late)
    assert comments_of(joined) == [1]
    assert joined.offset == 1  # the offset of what the snapshot covers
    await asyncio.sleep(0)
    assert late.comment_offsets() == [2]
    assert early.comment_offsets() == [1, 2]


@bounded(5)
async def test_events_published_before_anyone_joined_are_the_first_joiners_snapshot() -> None:
    room = make_room(history_size=3, snapshot_size=3)
    for i in range(5):
        publish(room, f"c{i}")
    sub = FakeSubscriber()
    joined = join(room, sub)  # nobody was there: 1 and 2 already left the history
    assert comments_of(joined) == [3, 4, 5]
    assert joined.offset == 5
    await asyncio.sleep(0.01)
    assert sub.comment_offsets() == []  # nothing is sent twice


@bounded(5)
async def test_join_with_more_unsent_events_than_history_does_not_crash() -> None:
    room = make_room(history_size=3, snapshot_size=3)
    early = FakeSubscriber()
    join(room, early)
    for i in range(5):
        publish(room, f"c{i}")
    sub = FakeSubscriber()
    joined = join(room, sub)  # joins the early one's slice: all five are unsent there
    assert comments_of(joined) == []
    assert joined.offset == 0
    await asyncio.sleep(0)
    assert sub.comment_offsets() == [1, 2, 3, 4, 5]
    assert early.comment_offsets() == [1, 2, 3, 4, 5]


@bounded(5)
async def test_snapshot_holds_the_latest_snapshot_size_comments() -> None:
    room = make_room(snapshot_size=3)
    for i in range(5):
        publish(room, f"c{i}")
    await asyncio.sleep(0)
    joined = join(room, FakeSubscriber())
    assert comments_of(joined) == [3, 4, 5]
    assert (joined.offset, joined.epoch, joined.resync, joined.viewers) == (
        5,
        room.epoch,
        False,
        1,
    )


@bounded(5)
async def test_history_is_a_bounded_ring_buffer_and_resume_beyond_it_resyncs() -> None:
    room = make_room(history_size=3, snapshot_size=2)
    for i in range(5):
        publish(room, f"c{i}")
    await asyncio.sleep(0)
    assert [e.offset for e in room.history] == [3, 4, 5]

    resumed = join(room, FakeSubscriber(), offset=2, epoch=room.epoch)  # 3.. still held
    assert (resumed.resync, comments_of(resumed)) == (False, [3, 4, 5])

    up_to_date = join(room, FakeSubscriber(), offset=5, epoch=room.epoch)
    assert (up_to_date.resync, comments_of(up_to_date)) == (False, [])

    too_old = join(room, FakeSubscriber(), offset=1, epoch=room.epoch)  # 2 was evicted
    assert (too_old.resync, comments_of(too_old)) == (True, [4, 5])

    from_the_future = join(room, FakeSubscriber(), offset=9, epoch=room.epoch)
    assert from_the_future.resync is True

    other_epoch = join(room, FakeSubscriber(), offset=4, epoch="not-this-epoch")
    assert (other_epoch.resync, comments_of(other_epoch)) == (True, [4, 5])


@bounded(5)
async def test_many_likes_are_conflated_into_one_likes_event_per_tick_latest_total() -> None:
    room = make_room()
    sub = FakeSubscriber()
    join(room, sub)
    for _ in range(10):
        room.add_likes(1)
    await asyncio.sleep(0)
    assert sub.frames == []  # likes wait for the tick
    room.tick()
    await asyncio.sleep(0)
    (batch,) = sub.batches()
    assert [e for e in batch.events if isinstance(e, Likes)] == [Likes(total=10)]
    assert [e for e in batch.events if isinstance(e, Viewers)] == [Viewers(count=1)]

    room.add_likes(5)
    room.tick()
    room.add_likes(2)
    room.tick()  # two ticks before a flush: only the latest total goes out
    await asyncio.sleep(0)
    assert len(sub.frames) == 2
    assert list(sub.batches()[1].events) == [Likes(total=17)]

    room.tick()  # nothing changed: nothing is sent
    await asyncio.sleep(0)
    assert len(sub.frames) == 2


@bounded(5)
async def test_viewers_event_follows_joins_and_leaves() -> None:
    room = make_room()
    a, b = FakeSubscriber(), FakeSubscriber(codec=JSON)
    join(room, a)
    join(room, b)
    room.tick()
    await asyncio.sleep(0)
    assert a.batches()[-1].events == (Viewers(count=2),)
    room.leave(b)
    room.tick()
    await asyncio.sleep(0)
    assert a.batches()[-1].events == (Viewers(count=1),)
    assert len(b.frames) == 1  # nothing after leaving


@bounded(5)
async def test_each_codec_gets_one_encoding_shared_by_all_its_subscribers() -> None:
    room = make_room()
    m1, m2 = FakeSubscriber(), FakeSubscriber()
    j1 = FakeSubscriber(codec=JSON)
    for sub in (m1, m2, j1):
        join(room, sub)
    publish(room, "héllo 👋")
    await asyncio.sleep(0)
    assert m1.frames[0] is m2.frames[0]  # the same bytes object, encoded once
    assert parse_frame(j1.frames[0]).opcode is Opcode.TEXT
    assert m1.batches()[0].events == j1.batches()[0].events
    assert room.frames_written == 3


@bounded(5)
async def test_leaving_subscriber_gets_nothing_more() -> None:
    room = make_room()
    stays, leaves = FakeSubscriber(), FakeSubscriber()
    join(room, stays)
    join(room, leaves)
    room.leave(leaves)
    publish(room)
    await asyncio.sleep(0)
    assert stays.comment_offsets() == [1]
    assert leaves.frames == []


@bounded(5)
async def test_epoch_differs_between_two_rooms_even_with_the_same_name() -> None:
    first, second = make_room(), make_room()
    assert first.epoch != second.epoch
    assert 1 <= len(first.epoch) <= 32  # fits Joined.epoch on the wire


@bounded(5)
async def test_hub_creates_rooms_on_demand_and_drops_them_after_the_empty_ttl() -> None:
    hub = Hub(history_size=10, snapshot_size=5, min_flush_interval=0.0, empty_room_ttl=0.05)
    room = hub.room("a")
    assert hub.room("a") is room
    assert hub.get("b") is None
    sub = FakeSubscriber()
    room.join(sub, offset=None, epoch=None, rid=None)
    publish(room)
    await asyncio.sleep(0.1)
    hub.tick()
    assert hub.get("a") is room  # occupied rooms stay
    room.leave(sub)
    hub.tick()
    assert hub.get("a") is room  # a room with history is kept for returning viewers
    await asyncio.sleep(0.1)
    hub.tick()
    assert hub.get("a") is None
    hub.close()


@bounded(5)
async def test_a_room_without_any_event_is_dropped_as_soon_as_its_last_viewer_leaves() -> None:
    hub = Hub(history_size=10, snapshot_size=5, min_flush_interval=0.0, empty_room_ttl=300.0)
    first, second = FakeSubscriber(), FakeSubscriber()
    room = hub.room("quiet")
    room.join(first, offset=None, epoch=None, rid=None)
    room.join(second, offset=None, epoch=None, rid=None)
    room.leave(first)
    assert hub.get("quiet") is room  # one viewer left
    room.leave(second)
    assert hub.get("quiet") is None  # nothing to resume: gone without waiting for the TTL
    assert hub.statistics().rooms_dropped == 1
    hub.close()


@bounded(5)
async def test_a_room_with_likes_but_no_event_is_kept_for_the_ttl() -> None:
    hub = Hub(history_size=10, snapshot_size=5, min_flush_interval=0.0, empty_room_ttl=300.0)
    sub = FakeSubscriber()
    room = hub.room("liked")
    room.join(sub, offset=None, epoch=None, rid=None)
    room.add_likes(3)
    room.leave(sub)
    assert hub.get("liked") is room
    again = FakeSubscriber()
    joined = expect(
        MSGPACK.decode_server(room.join(again, offset=None, epoch=None, rid=1).payload(MSGPACK)),
        Joined,
    )
    assert joined.likes == 3
    hub.close()


@bounded(5)
async def test_joining_and_leaving_many_distinct_rooms_leaves_no_room_behind() -> None:
    hub = Hub(history_size=1000, snapshot_size=50, min_flush_interval=0.0, empty_room_ttl=300.0)
    sub = FakeSubscriber()
    for i in range(2000):
        room = hub.room(f"r{i}")
        room.join(sub, offset=None, epoch=None, rid=None)
        room.leave(sub)
    stats = hub.statistics()
    assert stats.rooms == 0 and stats.rooms_dropped == 2000
    hub.close()


def _occupy(hub: Hub, name: str, *, events: int = 0) -> tuple[Room, FakeSubscriber]:
    room = hub.room(name)
    sub = FakeSubscriber()
    room.join(sub, offset=None, epoch=None, rid=None)
    for _ in range(events):
        publish(room)
    return room, sub


@bounded(5)
async def test_a_new_room_beyond_max_rooms_drops_the_longest_empty_rooms_first() -> None:
    hub = Hub(history_size=10, snapshot_size=5, min_flush_interval=0.0, max_rooms=3)
    a, a_sub = _occupy(hub, "a", events=1)
    b, b_sub = _occupy(hub, "b", events=1)
    c, _ = _occupy(hub, "c", events=1)
    b.leave(b_sub)  # b empties first,
    a.leave(a_sub)  # then a
    hub.room("d")
    assert sorted(hub.rooms) == ["a", "c", "d"]  # b, longest empty, made room
    hub.room("e")
    assert sorted(hub.rooms) == ["c", "d", "e"]  # then a: d has no viewer yet but is newer
    assert hub.get("c") is c
    assert hub.statistics().rooms_dropped == 2
    hub.close()


@bounded(5)
async def test_a_room_that_refills_is_no_longer_a_candidate_for_dropping() -> None:
    hub = Hub(history_size=10, snapshot_size=5, min_flush_interval=0.0, max_rooms=2)
    a, a_sub = _occupy(hub, "a", events=1)
    b, b_sub = _occupy(hub, "b", events=1)
    a.leave(a_sub)
    b.leave(b_sub)
    a.join(FakeSubscriber(), offset=None, epoch=None, rid=None)  # a is occupied again
    hub.room("c")
    assert sorted(hub.rooms) == ["a", "c"]
    hub.close()


@bounded(5)
async def test_a_new_room_is_refused_with_rooms_full_when_every_room_has_viewers() -> None:
    hub = Hub(history_size=10, snapshot_size=5, min_flush_interval=0.0, max_rooms=2)
    a, _ = _occupy(hub, "a")
    b, _ = _occupy(hub, "b", events=2)
    with pytest.raises(RoomsFull):
        hub.room("c")
    assert hub.room("a") is a and hub.room("b") is b  # rooms held are still served
    assert sorted(hub.rooms) == ["a", "b"]
    stats = hub.statistics()
    assert stats.rooms_full == 1 and stats.rooms_dropped == 0
    hub.close()


@bounded(5)
async def test_counters_of_dropped_rooms_stay_in_the_hub_totals() -> None:
    hub = Hub(history_size=10, snapshot_size=5, min_flush_interval=0.0, max_rooms=1)
    room, sub = _occupy(hub, "a", events=3)
    await asyncio.sleep(0)  # the batch is written
    before = hub.statistics()
    assert (before.events_published, before.frames_written) == (3, 1)
    room.leave(sub)
    _occupy(hub, "b", events=1)  # drops a to make room
    after = hub.statistics()
    assert after.rooms == 1 and after.rooms_dropped == 1
    assert after.events_published == 4 and after.frames_written >= 1
    hub.close()


# --- the node's write budget ------------------------------------------------------------


@dataclass(eq=False)
class BudgetSubscriber(FakeSubscriber):
    """A recording subscriber that knows its rooms, so that a cut can make it leave."""

    rooms: list[Room] = field(default_factory=list)


class CutRecorder:
    """Records the subscribers a hub's write budget cuts off; each leaves its rooms."""

    def __init__(self) -> None:
        self.cut: list[BudgetSubscriber] = []

    def __call__(self, sub: Subscriber) -> None:
        assert isinstance(sub, BudgetSubscriber)
        self.cut.append(sub)
        for room in sub.rooms:
            room.leave(sub)


def _budget_hub(limit: int, cut: CutRecorder, **kwargs: Any) -> tuple[Hub, WriteBudget]:
    budget = WriteBudget(limit, interval=0.0)
    hub = Hub(
        history_size=10,
        snapshot_size=5,
        min_flush_interval=0.0,
        write_limit=1 << 30,
        write_budget=budget,
        cut_off=cut,
        **kwargs,
    )
    return hub, budget


def _subscribe(hub: Hub, room_name: str, sub: BudgetSubscriber) -> None:
    room = hub.room(room_name)
    room.join(sub, offset=None, epoch=None, rid=None)
    sub.rooms.append(room)


@bounded(5)
async def test_over_the_write_budget_the_most_behind_are_cut_first_until_three_quarters() -> None:
    cut = CutRecorder()
    hub, budget = _budget_hub(1000, cut)
    subs = [BudgetSubscriber(unsent=n) for n in (100, 500, 50, 300, 200)]
    for sub in subs:
        _subscribe(hub, "a", sub)
    publish(hub.room("a"))
    await asyncio.sleep(0)  # the slice is written: the estimate passes 1000
    assert budget.estimate == 1150 and budget.passes == 0  # the exact pass comes next turn
    await asyncio.sleep(0)
    # 1150 > 1000: cut 500 (-> 650 <= 750) and stop there.
    assert [s.unsent for s in cut.cut] == [500]
    assert budget.passes == 1 and budget.cuts == 1 and budget.unsent == 650
    assert budget.estimate == 650 and hub.room("a").viewers == 4
    stats = hub.statistics()
    assert (stats.budget_passes, stats.budget_cuts, stats.unsent_estimate) == (1, 1, 650)
    hub.close()


@bounded(5)
async def test_under_the_write_budget_nothing_is_measured_nor_cut() -> None:
    cut = CutRecorder()
    hub, budget = _budget_hub(1000, cut)
    for n in (300, 300, 300):
        _subscribe(hub, "a", BudgetSubscriber(unsent=n))
    publish(hub.room("a"))
    for _ in range(3):
        await asyncio.sleep(0)
    assert budget.estimate == 900 and budget.passes == 0 and cut.cut == []
    hub.close()


@bounded(5)
async def test_a_stale_estimate_leads_to_an_exact_pass_that_cuts_nobody() -> None:
    cut = CutRecorder()
    hub, budget = _budget_hub(1000, cut)
    quiet, busy = BudgetSubscriber(unsent=900), BudgetSubscriber(unsent=200)
    _subscribe(hub, "quiet", quiet)
    _subscribe(hub, "busy", busy)
    publish(hub.room("quiet"))
    await asyncio.sleep(0)
    quiet.unsent = 0  # its reader caught up, but its room writes nothing more
    publish(hub.room("busy"))
    for _ in range(3):
        await asyncio.sleep(0)
    assert budget.passes == 1 and cut.cut == []  # 900 + 200 estimated, 200 measured
    assert budget.estimate == 200 and budget.unsent == 200
    hub.close()


@bounded(5)
async def test_a_subscriber_in_several_rooms_is_measured_once_and_cut_once() -> None:
    cut = CutRecorder()
    hub, budget = _budget_hub(1000, cut)
    everywhere = BudgetSubscriber(unsent=400)
    for name in ("a", "b", "c"):
        _subscribe(hub, name, everywhere)
    other = BudgetSubscriber(unsent=100)
    _subscribe(hub, "a", other)
    for name in ("a", "b", "c"):
        publish(hub.room(name))
    for _ in range(4):
        await asyncio.sleep(0)
    # Slices estimate 1300 (the same 400 bytes seen in three rooms); measured: 500.
    assert budget.passes >= 1 and cut.cut == [] and budget.unsent == 500
    hub.close()


@bounded(5)
async def test_leaving_subscribers_take_their_slice_out_of_the_estimate() -> None:
    cut = CutRecorder()
    hub, budget = _budget_hub(10_000, cut, slice_size=1)
    subs = [BudgetSubscriber(unsent=100) for _ in range(3)]
    for sub in subs:
        _subscribe(hub, "a", sub)
    publish(hub.room("a"))
    await wait_for_condition(lambda: budget.estimate == 300)
    hub.room("a").leave(subs[0])
    assert budget.estimate == 200
    hub.close()


# --- slices: a large room is written a slice per loop step ------------------------------


@bounded(5)
async def test_a_large_room_is_written_one_slice_per_loop_step() -> None:
    room = make_room(slice_size=2)
    subs = [FakeSubscriber() for _ in range(5)]
    for sub in subs:
        join(room, sub)
    assert len(room.slices) == 3
    publish(room, "one")
    await asyncio.sleep(0)
    assert [len(sub.frames) for sub in subs] == [1, 1, 0, 0, 0]
    await asyncio.sleep(0)
    assert [len(sub.frames) for sub in subs] == [1, 1, 1, 1, 0]
    await asyncio.sleep(0)
    assert [sub.comment_offsets() for sub in subs] == [[1]] * 5


@bounded(5)
async def test_events_published_during_a_round_reach_every_slice_once_and_in_order() -> None:
    room = make_room(slice_size=2)
    subs = [FakeSubscriber() for _ in range(6)]
    for sub in subs:
        join(room, sub)
    publish(room, "a")
    await asyncio.sleep(0)  # slice 1 written with [1]
    publish(room, "b")
    publish(room, "c")
    await asyncio.sleep(0)  # slice 2 written with [1, 2, 3] in one frame
    publish(room, "d")
    await wait_for_condition(lambda: all(sub.comment_offsets() == [1, 2, 3, 4] for sub in subs))
    first_frame_of_slice_2 = subs[2].batches()[0]
    assert [expect(e, Comment).offset for e in first_frame_of_slice_2.events] == [1, 2, 3]
    assert room.flushed_offset == 4
    assert not room._unsent  # everything delivered is forgotten by the fan-out


@bounded(5)
async def test_leaving_and_joining_during_a_round_keeps_every_subscriber_exact() -> None:
    room = make_room(slice_size=2)
    subs = [FakeSubscriber() for _ in range(4)]
    for sub in subs:
        join(room, sub)
    publish(room, "a")
    await asyncio.sleep(0)  # first slice written
    room.leave(subs[2])
    room.leave(subs[3])  # the second slice empties and goes away mid-round
    late = FakeSubscriber()
    joined = join(room, late)  # joins the first slice: it has been sent offset 1
    assert comments_of(joined) == [1]
    publish(room, "b")
    await wait_for_condition(lambda: late.comment_offsets() == [2])
    assert subs[0].comment_offsets() == [1, 2] and subs[1].comment_offsets() == [1, 2]
    assert subs[2].comment_offsets() == [] and len(room.slices) == 2


@bounded(5)
async def test_conflated_values_reach_every_slice() -> None:
    room = make_room(slice_size=1)
    subs = [FakeSubscriber() for _ in range(3)]
    for sub in subs:
        join(room, sub)
    room.add_likes(7)
    room.tick()
    await wait_for_condition(
        lambda: all(
            any(isinstance(e, Likes) and e.total == 7 for b in sub.batches() for e in b.events)
            for sub in subs
        )
    )
    frames = [len(sub.frames) for sub in subs]
    room.tick()  # nothing changed: nothing is sent again
    await asyncio.sleep(0.01)
    assert [len(sub.frames) for sub in subs] == frames


@bounded(5)
async def test_a_subscriber_over_the_write_limit_is_cut_off_after_its_slice_is_written() -> None:
    room = make_room(write_limit=1000)
    first, slow, last = FakeSubscriber(), FakeSubscriber(), FakeSubscriber()
    for sub in (first, slow, last):
        sub.room = room
        join(room, sub)
    slow.unsent = 1001  # what its transport would report after the write
    publish(room, "one")
    await asyncio.sleep(0)
    # Everyone in the slice got the frame, the slow one too; then it was cut off, once.
    assert [s.comment_offsets() for s in (first, slow, last)] == [[1], [1], [1]]
    assert (first.cut_off, slow.cut_off, last.cut_off) == (0, 1, 0)
    assert room.viewers == 2
    publish(room, "two")
    await asyncio.sleep(0)
    assert first.comment_offsets() == last.comment_offsets() == [1, 2]
    assert slow.comment_offsets() == [1] and slow.cut_off == 1


@bounded(5)
async def test_cutting_off_a_codecs_only_subscriber_leaves_the_rest_of_the_slice_intact() -> None:
    room = make_room(write_limit=1000, slice_size=4)
    slow_json = FakeSubscriber(codec=JSON)
    others = [FakeSubscriber() for _ in range(5)]  # 3 share the slice, 2 in the next one
    for sub in (others[0], slow_json, *others[1:]):
        sub.room = room
        join(room, sub)
    slow_json.unsent = 5000
    publish(room, "one")
    for _ in range(3):
        await asyncio.sleep(0)
    assert slow_json.cut_off == 1 and slow_json.comment_offsets() == [1]
    assert [s.comment_offsets() for s in others] == [[1]] * 5
    publish(room, "two")
    for _ in range(3):
        await asyncio.sleep(0)
    assert [s.comment_offsets() for s in others] == [[1, 2]] * 5
    assert slow_json.comment_offsets() == [1] and room.viewers == 5

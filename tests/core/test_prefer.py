"""RFC 7240 ``Prefer: wait`` parsing and the pure decision to hold a request."""

from __future__ import annotations

import pytest

from proxy.core.prefer import Hold, Shed, hold_decision, requested_wait


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["wait=25"], 25),
        (["respond-async, wait=10"], 10),
        (["WAIT=7"], 7),
        (['wait="5"'], 5),
        (["wait=5; foo=bar"], 5),
        (["return=minimal", "wait=3"], 3),
        (["wait=3, wait=9"], 3),  # §2: the first instance counts
        (["wait"], None),
        (["wait=soon"], None),
        (["wait=-1"], None),
        (["respond-async"], None),
        ([], None),
        (["wait=99999999999999"], 2**31),
    ],
)
def test_requested_wait_reads_the_first_wait_preference(
    values: list[str], expected: int | None
) -> None:
    assert requested_wait(values) == expected


def test_the_applied_wait_is_capped_by_max_wait() -> None:
    assert hold_decision(600, waiting=0, max_waiters=10, max_wait=30) == Hold(30.0, "wait=30")
    assert hold_decision(5, waiting=0, max_waiters=10, max_wait=30) == Hold(5.0, "wait=5")


def test_past_max_waiters_the_request_is_shed() -> None:
    assert hold_decision(5, waiting=10, max_waiters=10, max_wait=30) == Shed()


@pytest.mark.parametrize(("requested", "max_wait"), [(None, 30.0), (0, 30.0), (5, 0.0)])
def test_no_usable_wait_means_no_hold(requested: int | None, max_wait: float) -> None:
    assert hold_decision(requested, waiting=0, max_waiters=10, max_wait=max_wait) is None

"""The policy's whole decisions: one value per request, carried out by the cache as it is."""

from __future__ import annotations

from multidict import CIMultiDict

from proxy.core.models import Answer, Fetch, Forward, Refuse, Relay, Serve
from proxy.core.policy import admit, lookup, settle, settle_error
from tests.core.test_policy import NOW, POLICY, facts, stored


def answer(status: int = 200, **fields: object) -> Answer:
    values: dict[str, object] = {
        "entry": None,
        "stored": False,
        "revalidated": False,
        "streamed": False,
        "led": True,
        "collapsed": False,
    }
    values.update(fields)
    return Answer(status, **values)  # type: ignore[arg-type]


def test_preconditions_and_bodies_bypass_the_store() -> None:
    assert admit(CIMultiDict({"If-Match": '"a"'}), has_body=False) == Forward(
        "aitronos-cache-proxy; fwd=request", "bypass"
    )
    # Byte ranges are answered from the stored response (proxy.core.ranges), not forwarded.
    assert admit(CIMultiDict({"Range": "bytes=0-1", "If-Range": '"a"'}), has_body=False) is None
    assert admit(CIMultiDict(), has_body=True) is not None
    assert admit(CIMultiDict({"If-None-Match": '"a"'}), has_body=False) is None


def test_a_fresh_entry_is_served_as_a_hit_with_its_ttl() -> None:
    entry = stored(("Cache-Control", "max-age=60"))
    decision = lookup((entry,), facts(), NOW + 10, POLICY)
    assert decision == Serve(entry, 10.0, "aitronos-cache-proxy; hit; ttl=50", "hit")


def test_stale_while_revalidate_serves_and_asks_for_a_refresh() -> None:
    entry = stored(("Cache-Control", "max-age=10, stale-while-revalidate=30"))
    decision = lookup((entry,), facts(), NOW + 20, POLICY)
    assert isinstance(decision, Serve) and decision.refresh and decision.result == "stale"


def test_a_miss_and_an_expired_entry_are_fetches() -> None:
    entry = stored(("Cache-Control", "max-age=10"))
    assert lookup(None, facts(), NOW, POLICY) == Fetch(None, "uri-miss")
    assert lookup((entry,), facts(), NOW + 20, POLICY) == Fetch(entry, "stale")


def test_only_if_cached_without_an_entry_is_refused_with_504() -> None:
    decision = lookup(None, facts(cache_control="only-if-cached"), NOW, POLICY)
    assert isinstance(decision, Refuse) and decision.status == 504


def test_an_origin_error_is_replaced_by_a_stale_entry_within_stale_if_error() -> None:
    entry = stored(("Cache-Control", "max-age=10, stale-if-error=100"))
    fetch = Fetch(entry, "stale")
    served = settle(fetch, answer(503), facts(), NOW + 20, POLICY)
    assert isinstance(served, Serve) and served.result == "stale"
    assert served.cache_status == "aitronos-cache-proxy; fwd=stale; fwd-status=503"
    assert settle_error(fetch, facts(), "timeout", NOW + 20, POLICY) is not None
    assert settle_error(Fetch(None, "uri-miss"), facts(), "timeout", NOW, POLICY) is None


def test_an_error_without_a_usable_entry_is_relayed_as_an_error() -> None:
    decision = settle(Fetch(None, "uri-miss"), answer(502), facts(), NOW, POLICY)
    assert decision == Relay("aitronos-cache-proxy; fwd=uri-miss; fwd-status=502", "error")


def test_a_streamed_answer_is_relayed_by_its_leader_and_forwarded_by_the_others() -> None:
    fetch = Fetch(None, "uri-miss")
    assert isinstance(settle(fetch, answer(streamed=True), facts(), NOW, POLICY), Relay)
    followed = settle(fetch, answer(streamed=True, led=False, collapsed=True), facts(), NOW, POLICY)
    assert isinstance(followed, Forward)


def test_a_stored_answer_is_served_with_its_fetch_recorded() -> None:
    entry = stored(("Cache-Control", "max-age=60"))
    decision = settle(
        Fetch(None, "uri-miss"), answer(entry=entry, stored=True), facts(), NOW + 1, POLICY
    )
    assert decision == Serve(
        entry, 1.0, "aitronos-cache-proxy; fwd=uri-miss; fwd-status=200; stored", "miss", False
    )


def test_a_collapsed_answer_for_another_variant_fetches_once_then_forwards() -> None:
    entry = stored(
        ("Vary", "Accept"), ("Cache-Control", "max-age=60"), selecting=(("accept", "x"),)
    )
    first = settle(Fetch(None, "uri-miss"), answer(entry=entry), facts(accept="a"), NOW, POLICY)
    assert first == Fetch(None, "vary-miss", ("accept",))
    again = settle(first, answer(entry=entry), facts(accept="a"), NOW, POLICY)
    assert isinstance(again, Forward)

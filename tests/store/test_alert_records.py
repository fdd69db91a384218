"""Alerts in the store: recorded rows, delivery bookkeeping, webhooks; and ``nbdeploy.alerts`` over them."""

from __future__ import annotations

import re

import pytest

import nbdeploy
from nbdeploy.errors import InvalidInput, UnknownName
from nbdeploy.store import Store
from nbdeploy.store.alerts import (
    DELIVERY_ATTEMPTS,
    alerts,
    mark_delivery,
    pending,
    record_alert,
    redact,
    set_webhook,
    webhook,
    webhooks,
)

HOOK = "https://hooks.example.com/services/T000/B000/secret-token"


def _store(home: str) -> Store:
    store = Store(home)
    store.register("churn", b"not read here", {"task": "classification"})
    store.set_serving("churn", True)
    return store


@pytest.fixture
def store(store_home: str) -> Store:
    return _store(store_home)


@pytest.fixture
def sqlite_store(tmp_path) -> Store:
    """For the checks of a webhook URL, made before the database is touched: one backend is enough."""
    return _store(str(tmp_path / "store"))


def test_alerts_are_listed_in_the_order_they_were_raised(store):
    record_alert(store, "churn", "WARN", ["error rate 2.0%"], source="monitor", detail={"version": 1})
    record_alert(store, "churn", "ALERT", ["canary error rate 9%"], source="canary")
    record_alert(store, "churn", "OK", ["back to OK from ALERT"], source="monitor")
    rows = alerts(store, "churn")
    assert [(a.level, a.source) for a in rows] == [("WARN", "monitor"), ("ALERT", "canary"), ("OK", "monitor")]
    assert rows[0].reasons == ["error rate 2.0%"] and rows[0].detail == {"version": 1}
    assert [a.level for a in alerts(store, "churn", limit=2)] == ["ALERT", "OK"]
    assert [a.level for a in alerts(store, "churn", source="monitor")] == ["WARN", "OK"]
    assert alerts(store, "other") == []
    assert all(a.delivery == "" and a.delivered_at is None for a in rows)


def test_a_level_that_is_not_one_of_the_three_is_refused(store):
    with pytest.raises(InvalidInput, match="'CRITICAL' is not one of OK, WARN, ALERT"):
        record_alert(store, "churn", "CRITICAL", ["x"], source="monitor")


def test_a_webhook_gets_only_the_alerts_raised_after_it_was_set(store):
    record_alert(store, "churn", "WARN", ["before the webhook"], source="monitor")
    assert pending(store) == {}  # no webhook: nothing to send
    set_webhook(store, "churn", HOOK)
    assert webhooks(store) == {"churn": HOOK}
    after = record_alert(store, "churn", "ALERT", ["after"], source="monitor")
    [(hook, waiting)] = pending(store).items()
    assert hook.url == HOOK and [a.id for a in waiting] == [after.id]
    set_webhook(store, "churn", None)
    assert webhooks(store) == {} and webhook(store, "churn") is None and pending(store) == {}


def test_delivery_attempts_are_recorded_until_sent_or_given_up(store):
    set_webhook(store, "churn", HOOK)
    sent = record_alert(store, "churn", "WARN", ["a"], source="monitor")
    lost = record_alert(store, "churn", "ALERT", ["b"], source="monitor")
    mark_delivery(store, [sent.id, lost.id], delivered=False, error="HTTP 500")
    mark_delivery(store, sent.id, delivered=True)
    first, second = alerts(store, "churn")
    assert (first.delivery, first.attempts, first.last_error) == ("sent", 2, None)
    assert (second.delivery, second.attempts, second.last_error) == ("retrying", 1, "HTTP 500")
    for _ in range(DELIVERY_ATTEMPTS - 1):
        mark_delivery(store, lost.id, delivered=False, error="HTTP 503")
    given_up = alerts(store, "churn")[-1]
    assert (given_up.delivery, given_up.attempts, given_up.last_error) == ("failed", DELIVERY_ATTEMPTS, "HTTP 503")
    assert pending(store) == {}  # neither is sent again


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "https://hooks.example.com/x?token=1",
                                 "HTTPS://Example.org", "  https://example.org/padded  "])
def test_http_and_https_webhooks_are_accepted(sqlite_store, url):
    assert set_webhook(sqlite_store, "churn", url).url == url.strip()


@pytest.mark.parametrize(("url", "needle"), [
    ("ftp://example.org/hook", "must be an http:// or https:// URL (got ftp:)"),
    ("file:///etc/passwd", "(got file:)"),
    ("hooks.example.com/x", "(this one has no scheme)"),
    ("https://", "names no host"),
    ("https://example.org:port/x", "cannot be read"),
    ("https://example.org/a b", "no spaces or control characters"),
    ("", "is an http:// or https:// URL, got ''"),
    (42, "got 42"),
])
def test_other_webhooks_are_refused_with_the_reason(sqlite_store, url, needle):
    with pytest.raises(InvalidInput, match=re.escape(needle)):
        set_webhook(sqlite_store, "churn", url)
    assert webhooks(sqlite_store) == {}


def test_a_webhook_for_a_model_that_is_not_stored_is_refused(store):
    with pytest.raises(UnknownName, match="did you mean 'churn'"):
        set_webhook(store, "chrun", HOOK)


def test_redacted_urls_keep_the_scheme_and_host_only():
    assert redact(HOOK) == "https://hooks.example.com/…"
    assert redact("http://user:pw@127.0.0.1:8080/x?k=1") == "http://127.0.0.1:8080/…"
    assert redact("https://example.org") == "https://example.org"


# -- nbdeploy.alerts: the kernel's view ----------------------------------------------------------
def test_nbdeploy_alerts_lists_the_history_and_sets_or_clears_the_webhook(store):
    home = store.location
    history = nbdeploy.alerts("churn", home=home)
    assert len(history) == 0 and history.webhook is None and history.level == "OK"
    assert "none recorded" in repr(history) and "no webhook" in repr(history)
    record_alert(store, "churn", "ALERT", ["error rate 50.0%"], source="monitor")
    history = nbdeploy.alerts("churn", webhook=HOOK, home=home)
    assert history.webhook == "https://hooks.example.com/…" and history.level == "ALERT"
    assert webhooks(store) == {"churn": HOOK}
    assert "secret-token" not in repr(history) + history._repr_html_()  # the secret stays in the store
    assert "ALERT" in repr(history) and "error rate 50.0%" in history._repr_html_()
    assert nbdeploy.alerts("churn", home=home).webhook == history.webhook  # not given: left as it is
    assert nbdeploy.alerts("churn", webhook=None, home=home).webhook is None
    assert webhooks(store) == {}


def test_nbdeploy_alerts_refuses_a_bad_url_and_an_unknown_model(store):
    with pytest.raises(InvalidInput, match="http:// or https://"):
        nbdeploy.alerts("churn", webhook="smtp://mail.example.org", home=store.location)
    with pytest.raises(UnknownName, match="did you mean 'churn'"):
        nbdeploy.alerts("churm", home=store.location)

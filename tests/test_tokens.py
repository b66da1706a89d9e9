"""The token service against the real sandbox, through the official Dybaseapi and MNS SDKs."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import structlog
from mns.account import Account
from mns.mns_exception import MNSServerException
from mns.queue import Message, Queue

from alicom_sandbox.redis_server import free_port
from alicom_sandbox.testing import SandboxHandle, running_sandbox
from consumer.clients.credentials import AccessKey
from consumer.clients.tokens import (
    MnsToken,
    TokenService,
    classify,
    parse_shanghai_time,
)
from consumer.errors import AlicomReceiptsError, AuthError, PermanentError, TransientError
from consumer.settings import Endpoints, TokenSettings

QUICK = TokenSettings(max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.05)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as handle:
        yield handle


@pytest.fixture(autouse=True)
def _reset_sandbox(sandbox: SandboxHandle) -> Iterator[None]:
    yield
    sandbox.reset()


def endpoints_of(sandbox: SandboxHandle) -> Endpoints:
    return Endpoints(sandbox.endpoint, sandbox.endpoint.removeprefix("http://"), "http",
                     "cn-hangzhou")


class TokenCounters:
    """A thread-safe `TokenObserver` that counts what the service reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.refreshes: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.invalidations: dict[str, int] = {}

    def _add(self, counter: dict[str, int], message_type: str) -> None:
        with self._lock:
            counter[message_type] = counter.get(message_type, 0) + 1

    def token_refreshed(self, message_type: str, lifetime_s: float) -> None:
        self._add(self.refreshes, message_type)

    def token_fetch_failed(self, message_type: str, error: AlicomReceiptsError) -> None:
        self._add(self.failures, message_type)

    def token_invalidated(self, message_type: str) -> None:
        self._add(self.invalidations, message_type)


ServiceFactory = Callable[..., tuple[TokenService, TokenCounters]]


@pytest.fixture
def make_service(sandbox: SandboxHandle) -> ServiceFactory:
    def make(settings: TokenSettings = QUICK, secret: str | None = None,
             stop: threading.Event | None = None) -> tuple[TokenService, TokenCounters]:
        counters = TokenCounters()
        key = AccessKey(sandbox.access_key_id, secret or sandbox.access_key_secret)
        service = TokenService(key, endpoints_of(sandbox), settings,
                               queue_name=sandbox.queue_name, stop=stop, observer=counters)
        return service, counters
    return make


def publish(sandbox: SandboxHandle, message_type: str, body: str = "aGVsbG8=") -> None:
    """Sends one message as the platform does (root AccessKey; the body is sent as given)."""
    queue = sandbox.account().get_queue(sandbox.queue_name(message_type))
    queue.set_encoding(False)
    queue.send_message(Message(body))


def touch(queue: Queue) -> None:
    """One signed MNS request on `queue`; raises if MNS refuses the credentials."""
    try:
        queue.batch_peek_message(1)
    except MNSServerException as exc:
        if exc.type != "MessageNotExist":  # an empty queue answers after checking auth
            raise


def drain(sandbox: SandboxHandle, message_type: str) -> None:
    queue = sandbox.account().get_queue(sandbox.queue_name(message_type))
    queue.set_encoding(False)
    while True:
        try:
            for msg in queue.batch_receive_message(16, 0):
                queue.delete_message(msg.receipt_handle)
        except Exception:  # the SDK raises MessageNotExist on an empty queue
            return


# -- fetching and using a token ---------------------------------------------------------------


def test_an_mns_account_using_the_provider_receives_from_its_types_queue(
        sandbox: SandboxHandle, make_service: ServiceFactory) -> None:
    drain(sandbox, "SmsReport")
    publish(sandbox, "SmsReport", "cmVjZWlwdA==")
    service, counters = make_service()
    account = Account(sandbox.endpoint,
                      credentials_provider=service.credentials_provider("SmsReport"))
    queue = account.get_queue(sandbox.queue_name("SmsReport"))
    queue.set_encoding(False)
    message = queue.receive_message(1)
    queue.delete_message(message.receipt_handle)
    assert message.message_body == "cmVjZWlwdA=="
    token = service.current("SmsReport")
    assert token is not None and token.access_key_id.startswith("STS.")
    assert counters.refreshes == {"SmsReport": 1}


def test_a_token_is_kept_and_shared_while_it_is_fresh(make_service: ServiceFactory) -> None:
    service, counters = make_service()
    first = service.token("SmsUp")
    provider_a = service.credentials_provider("SmsUp")
    provider_b = service.credentials_provider("SmsUp")
    assert provider_a.get_credentials() is first.credentials
    assert provider_b.get_credentials() is first.credentials
    assert service.token("SmsUp") is first
    assert counters.refreshes == {"SmsUp": 1}
    assert first.credentials.get_security_token() == first.security_token


def test_the_token_times_are_read_as_shanghai_time(make_service: ServiceFactory) -> None:
    assert parse_shanghai_time("2024-01-01 08:00:00") == 1704067200.0  # 00:00 UTC
    service, _ = make_service()
    before = time.time()
    token = service.token("SmsReport")
    # The sandbox's default lifetime is an hour; the ExpireTime text, read as Shanghai time,
    # lands an hour from now on the epoch scale (a naive local reading would be hours off).
    assert abs(parse_shanghai_time(token.expire_time) - (before + 3600)) < 5
    assert 3590 < token.lifetime_s <= 3600
    assert token.refresh_at == pytest.approx(token.expires_at - 120)


def test_the_provider_rotates_tokens_before_expiry_and_calls_keep_working(
        sandbox: SandboxHandle, make_service: ServiceFactory) -> None:
    sandbox.set_token_lifetime(3)
    service, counters = make_service(TokenSettings(refresh_before_s=1))
    provider = service.credentials_provider("SmsUp")
    queue = Account(sandbox.endpoint, credentials_provider=provider).get_queue(
        sandbox.queue_name("SmsUp"))
    used: list[str] = []
    for _ in range(200):  # about 8 s of calls spanning several 3 s tokens
        touch(queue)  # raises if MNS refuses the token
        token = service.current("SmsUp")
        assert token is not None
        if not used or used[-1] != token.access_key_id:
            used.append(token.access_key_id)
        if len(used) >= 4:
            break
        time.sleep(0.04)
    assert len(used) >= 4, used
    assert counters.invalidations == {}  # rotated ahead of expiry, never after a refusal
    assert counters.failures == {}


# -- invalidation ----------------------------------------------------------------------------


def test_eight_threads_invalidating_at_once_cause_a_single_refresh(
        make_service: ServiceFactory) -> None:
    service, counters = make_service()
    stale = service.token("SmsReport")
    start = threading.Barrier(8)
    results: list[MnsToken] = []
    lock = threading.Lock()

    def poller() -> None:
        start.wait()
        service.invalidate("SmsReport", stale)
        fresh = service.token("SmsReport")
        with lock:
            results.append(fresh)

    threads = [threading.Thread(target=poller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counters.refreshes == {"SmsReport": 2}  # the first token and one replacement
    assert counters.invalidations == {"SmsReport": 1}
    assert len({id(r) for r in results}) == 1
    assert results[0] is not stale


def test_providers_invalidate_only_the_token_their_thread_used(
        sandbox: SandboxHandle, make_service: ServiceFactory) -> None:
    service, counters = make_service()
    provider = service.credentials_provider("SmsUp")
    assert provider.invalidate() is False  # this thread has used no token yet
    accounts = [Account(sandbox.endpoint, credentials_provider=provider) for _ in range(8)]
    for account in accounts:  # every poller's client signs a request with the token
        touch(account.get_queue(sandbox.queue_name("SmsUp")))
    barrier = threading.Barrier(8)
    outcomes: list[bool] = []

    def on_403(account: Account) -> None:
        touch(account.get_queue(sandbox.queue_name("SmsUp")))
        barrier.wait()
        outcomes.append(provider.invalidate())
        touch(account.get_queue(sandbox.queue_name("SmsUp")))

    threads = [threading.Thread(target=on_403, args=(a,)) for a in accounts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [False] * 7 + [True]
    assert counters.refreshes == {"SmsUp": 2}


def test_invalidating_by_access_key_id_of_an_old_token_does_nothing(
        make_service: ServiceFactory) -> None:
    service, _ = make_service()
    old = service.token("SmsReport")
    assert service.invalidate("SmsReport", old.access_key_id) is True
    new = service.token("SmsReport")
    assert service.invalidate("SmsReport", old.access_key_id) is False
    assert service.invalidate("SmsReport", old) is False
    assert service.current("SmsReport") is new


# -- failures ---------------------------------------------------------------------------------


def test_a_wrong_secret_is_an_auth_error_after_a_single_attempt(
        make_service: ServiceFactory) -> None:
    service, counters = make_service(TokenSettings(max_attempts=5), secret="not-the-secret")
    with pytest.raises(AuthError, match="SignatureDoesNotMatch"):
        service.token("SmsReport")
    assert counters.failures == {"SmsReport": 1}  # refused keys are not retried


def test_an_unknown_message_type_is_a_permanent_error(make_service: ServiceFactory) -> None:
    service, counters = make_service()
    with pytest.raises(PermanentError, match=r"isv\.INVALID_PARAMETERS"):
        service.token("NoSuchType")
    assert counters.failures == {"NoSuchType": 1}


def test_an_unreachable_token_api_is_transient_and_retried_a_bounded_number_of_times() -> None:
    counters = TokenCounters()
    port = free_port()  # nothing listens there
    service = TokenService(AccessKey("id", "secret"),
                           Endpoints(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", "http",
                                     "cn-hangzhou"),
                           QUICK, observer=counters)
    with pytest.raises(TransientError, match="QueryTokenForMnsQueue"):
        service.token("SmsReport")
    assert counters.failures == {"SmsReport": QUICK.max_attempts}


def test_callers_waiting_on_a_failing_fetch_share_its_error_instead_of_refetching() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # accepts connections (in the kernel) and never answers
        port = silent.getsockname()[1]
        counters = TokenCounters()
        service = TokenService(AccessKey("id", "secret"),
                               Endpoints(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", "http",
                                         "cn-hangzhou"),
                               TokenSettings(max_attempts=1, read_timeout_s=1.0),
                               observer=counters)
        start = threading.Barrier(8)
        errors: list[Exception] = []

        def poller() -> None:
            start.wait()
            try:
                service.token("SmsReport")
            except TransientError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=poller) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(errors) == 8
    assert counters.failures == {"SmsReport": 1}  # one read timeout, seen by all eight


def test_a_set_stop_event_ends_retrying_after_the_current_attempt() -> None:
    counters = TokenCounters()
    stop = threading.Event()
    stop.set()
    port = free_port()
    service = TokenService(AccessKey("id", "secret"),
                           Endpoints(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", "http",
                                     "cn-hangzhou"),
                           TokenSettings(max_attempts=10, backoff_initial_s=30, backoff_max_s=30),
                           stop=stop, observer=counters)
    with pytest.raises(TransientError):
        service.token("SmsReport")
    assert counters.failures == {"SmsReport": 1}


def test_a_failed_refresh_keeps_the_still_valid_token(
        sandbox: SandboxHandle, make_service: ServiceFactory) -> None:
    sandbox.set_token_lifetime(7)  # 6 s of life counted, replaced 3 s before the end
    service, counters = make_service(TokenSettings(refresh_before_s=3, max_attempts=1))
    token = service.token("SmsReport")
    time.sleep(max(0.0, token.refresh_at - time.time()) + 0.05)
    sandbox.set_clock_skew(3600)  # the token API now refuses our requests as stale
    assert service.token("SmsReport") is token
    assert counters.failures == {"SmsReport": 1}
    assert service.token("SmsReport") is token  # no second try at once: it pauses
    assert counters.failures == {"SmsReport": 1}


@pytest.mark.parametrize(("code", "status", "kind"), [
    ("Throttling.User", 400, TransientError),
    ("ServiceUnavailable", 503, TransientError),
    ("SignatureNonceUsed", 400, TransientError),
    ("InvalidAccessKeyId.NotFound", 404, AuthError),
    ("Forbidden.RAM", 403, AuthError),
    ("InvalidSecurityToken.Expired", 400, AuthError),
    ("MissingMessageType", 400, PermanentError),
    ("isv.INVALID_PARAMETERS", None, PermanentError),
    ("isv.BUSINESS_LIMIT_CONTROL", None, TransientError),
    ("SomethingNew", None, TransientError),
    ("SomethingNew", 400, PermanentError),
    ("SomethingNew", 500, TransientError),
])
def test_error_codes_map_to_the_error_family(
        code: str, status: int | None, kind: type[Exception]) -> None:
    assert classify(code, status) is kind


# -- clock skew -------------------------------------------------------------------------------


@pytest.mark.parametrize("skew_s", [600.0, -600.0])
def test_a_skewed_server_clock_does_not_break_the_expiry_maths(
        sandbox: SandboxHandle, make_service: ServiceFactory, skew_s: float) -> None:
    sandbox.set_clock_skew(skew_s)
    sandbox.set_token_lifetime(30)
    service, counters = make_service(TokenSettings(refresh_before_s=10))
    token = service.token("SmsReport")
    assert token.clock_offset_s is not None
    assert abs(token.clock_offset_s - skew_s) < 5
    # Life is counted on the server's own clock (ExpireTime - CreateTime), so it is neither
    # stretched to 630 s nor negative; the token is not refetched in a loop.
    assert 28 <= token.lifetime_s <= 30
    assert token.refresh_at == pytest.approx(token.expires_at - 10)
    for _ in range(20):
        service.credentials_provider("SmsReport").get_credentials()
    assert counters.refreshes == {"SmsReport": 1}
    account = Account(sandbox.endpoint,
                      credentials_provider=service.credentials_provider("SmsReport"))
    touch(account.get_queue(sandbox.queue_name("SmsReport")))  # MNS accepts it


# -- secrets ----------------------------------------------------------------------------------


def test_no_secret_or_security_token_appears_in_any_log_output(
        sandbox: SandboxHandle, make_service: ServiceFactory,
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEBUG", "1")  # would make the Tea SDK dump request headers
    caplog.set_level(logging.DEBUG)
    sandbox.set_token_lifetime(3)
    seen: list[MnsToken] = []
    with structlog.testing.capture_logs() as events:
        service, _ = make_service(TokenSettings(refresh_before_s=1))
        first = service.token("SmsReport")
        seen.append(first)
        service.invalidate("SmsReport", first)
        seen.append(service.token("SmsReport"))
        time.sleep(max(0.0, seen[-1].refresh_at - time.time()) + 0.05)
        seen.append(service.token("SmsReport"))  # a refresh ahead of expiry
        bad, _ = make_service(secret="wrong-" + sandbox.access_key_secret)
        with pytest.raises(AuthError) as refused:
            bad.token("SmsUp")
    out, err = capfd.readouterr()
    text = "\n".join([out, err, caplog.text, repr(events), str(refused.value),
                      *(repr(t) for t in seen), repr(AccessKey("id", sandbox.access_key_secret))])
    assert len({t.access_key_id for t in seen}) == 3
    assert any(e["event"] == "token_fetched" for e in events)
    secrets = [sandbox.access_key_secret]
    secrets += [s for t in seen for s in (t.access_key_secret, t.security_token)]
    for secret in secrets:
        assert secret not in text

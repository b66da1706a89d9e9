"""The sandbox's sending side: Dysmsapi 2017-05-25 `SendSms`, `SendBatchSms`, `QuerySendDetails`.

The actions join the OpenAPI registry of `alicom_sandbox.dybase` (same port, same ACS3
checks), so the official `alibabacloud_dysmsapi20170525` client works against the sandbox
with `Config(endpoint="127.0.0.1:PORT", protocol="http")`. A send answers `Code` "OK" and one
`BizId` per request (shared by all its numbers, as on the real service), keeps one record per
number, and after a random delay in `[report_delay_min_s, report_delay_max_s]` settles each
record as delivered (SendStatus 3) or failed (2, `failure_rate`, with one of `failure_codes`) and
produces its SmsReport receipt: into the MNS queue `Alicom-Queue-<account>-SmsReport` of the
sandbox's engine (in-process), or POSTed as a one-element JSON array to `push_url`. A share
`duplicate_rate` of receipts is produced twice; a share `loss_rate` is *lost*: the record is
settled (QuerySendDetails sees it) but no receipt is ever produced, which is what
reconciliation exists for. `OwnerId`, when a request gives it, picks the account of the queue.

`QuerySendDetails` answers from those records (PhoneNumber and SendDate required, BizId
optional, PageSize 1-50, CurrentPage from 1), records of the last 30 days only. Past
`query_qps` (or `send_qps`) requests a second the sandbox throttles, as the real flow control
does: `throttle = "business"` answers HTTP 200 `Code` isv.BUSINESS_LIMIT_CONTROL (returned by
the SDK as a result), `"gateway"` answers HTTP 429 Throttling.User (raised by the SDK).

Admin API (loopback only): `GET /_sandbox/dysms` settings and counters; `POST /_sandbox/dysms`
changes settings (any `DysmsSettings` field); `POST /_sandbox/dysms/reset` settings back to
the start values, records and counters cleared; `GET /_sandbox/dysms/lost` the lost receipts
(`biz_id`, `phone_number`); `POST /_sandbox/dysms/deliver-lost` produces them after all (a
receipt arriving very late).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Sequence
from typing import Any

import aiohttp

from alicom_sandbox.context import SandboxContext, queue_name_for
from alicom_sandbox.dybase import ERRORS, AcsAction, AcsCall, AcsError, register_action
from alicom_sandbox.fakes import SHANGHAI, encode_body
from alicom_sandbox.mns_queue import SendEntry
from alicom_sandbox.sms_records import DysmsSettings, DysmsState, SendRecord

log = logging.getLogger(__name__)

DYSMSAPI_VERSION = "2017-05-25"
HOST_ID = "dysmsapi.aliyuncs.com"
MAX_NUMBERS = 1000  # SendSms: at most 1000 numbers per request
MAX_BATCH_NUMBERS = 100  # SendBatchSms: at most 100 numbers per request
QUERY_WINDOW_DAYS = 30  # QuerySendDetails covers the last 30 days
_BAD_JSON = "JSON参数不合法\uff0c只接受字符串值"  # the platform's text; \uff0c is its comma

ERRORS.update({
    "MissingPhoneNumbers": (400, "PhoneNumbers is mandatory for this action."),
    "MissingSignName": (400, "SignName is mandatory for this action."),
    "MissingTemplateCode": (400, "TemplateCode is mandatory for this action."),
    "MissingPhoneNumberJson": (400, "PhoneNumberJson is mandatory for this action."),
    "MissingSignNameJson": (400, "SignNameJson is mandatory for this action."),
    "MissingPhoneNumber": (400, "PhoneNumber is mandatory for this action."),
    "MissingSendDate": (400, "SendDate is mandatory for this action."),
    "MissingPageSize": (400, "PageSize is mandatory for this action."),
    "MissingCurrentPage": (400, "CurrentPage is mandatory for this action."),
})


def configure(ctx: SandboxContext, settings: DysmsSettings) -> DysmsState:
    """Sets the start settings of `ctx`'s sending side (the CLI calls this once)."""
    ctx.dysms = DysmsState(settings)
    return ctx.dysms


def state_of(ctx: SandboxContext) -> DysmsState:
    return ctx.dysms


# ---- actions ---------------------------------------------------------------------------------


def _business(call: AcsCall, code: str, message: str) -> dict[str, Any]:
    return {"Code": code, "Message": message, "RequestId": call.request_id}


def _normalise(phone: str) -> str:
    """A mainland number without its +86 / 0086 / 86 prefix (receipts carry it bare)."""
    phone = phone.strip()
    for prefix in ("+86", "0086", "86"):
        if phone.startswith(prefix) and len(phone) - len(prefix) == 11:
            return phone[len(prefix):]
    return phone


def _required(call: AcsCall, name: str) -> str:
    value = call.params.get(name, "")
    if not value:
        raise AcsError("Missing" + name)
    return value


def _json_list(text: str) -> list[Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def _throttle_answer(call: AcsCall, state: DysmsState) -> dict[str, Any]:
    state.counters["throttled"] += 1
    if state.settings.throttle == "gateway":
        raise AcsError("Throttling.User")
    return _business(call, "isv.BUSINESS_LIMIT_CONTROL", "触发云通信流控限制")


def send_sms(call: AcsCall, ctx: SandboxContext) -> dict[str, Any]:
    """`SendSms`: one BizId for every number of `PhoneNumbers` (comma-separated)."""
    state = state_of(ctx)
    numbers = [_normalise(p) for p in _required(call, "PhoneNumbers").split(",")]
    sign, template = _required(call, "SignName"), _required(call, "TemplateCode")
    if state.throttled(call.action):
        return _throttle_answer(call, state)
    if len(numbers) > MAX_NUMBERS:
        return _business(call, "isv.MOBILE_COUNT_OVER_LIMIT", "手机号码数量超过限制")
    params = call.params.get("TemplateParam", "")
    if params and not isinstance(_parsed(params), dict):
        return _business(call, "isv.INVALID_JSON_PARAM", _BAD_JSON)
    return _accept(call, ctx, [(n, sign, params) for n in numbers], template)


def send_batch_sms(call: AcsCall, ctx: SandboxContext) -> dict[str, Any]:
    """`SendBatchSms`: JSON arrays of numbers, signatures and (optional) template params."""
    state = state_of(ctx)
    numbers = _json_list(_required(call, "PhoneNumberJson"))
    signs = _json_list(_required(call, "SignNameJson"))
    template = _required(call, "TemplateCode")
    params_text = call.params.get("TemplateParamJson", "")
    params = _json_list(params_text) if params_text else None
    if state.throttled(call.action):
        return _throttle_answer(call, state)
    if numbers is None or signs is None or (params_text and params is None):
        return _business(call, "isv.INVALID_JSON_PARAM", _BAD_JSON)
    if len(numbers) > MAX_BATCH_NUMBERS:
        return _business(call, "isv.MOBILE_COUNT_OVER_LIMIT", "手机号码数量超过限制")
    if len(signs) != len(numbers) or (params is not None and len(params) != len(numbers)):
        return _business(call, "isv.INVALID_PARAMETERS", "参数个数不一致")
    texts = [json.dumps(p, ensure_ascii=False) for p in params] if params else [""] * len(numbers)
    entries = [(_normalise(str(n)), str(s), t) for n, s, t in zip(numbers, signs, texts,
                                                                  strict=True)]
    return _accept(call, ctx, entries, template)


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _accept(call: AcsCall, ctx: SandboxContext, entries: Sequence[tuple[str, str, str]],
            template: str) -> dict[str, Any]:
    """Records each number under one new BizId and schedules its receipt."""
    if not all(n.isdigit() and 5 <= len(n) <= 20 for n, _, _ in entries):
        return _business(call, "isv.MOBILE_NUMBER_ILLEGAL", "非法手机号")
    state = state_of(ctx)
    biz_id = state.next_biz_id()
    account = call.params.get("OwnerId") or state.settings.account_id or ctx.config.account_id
    loop = asyncio.get_running_loop()
    records = []
    for number, sign, params in entries:
        fields = {"account_id": account, "template_code": template,
                  "out_id": call.params.get("OutId", ""),
                  "content": f"【{sign}】{template} {params}".rstrip()}
        record = SendRecord(biz_id, number, call.now, fields)
        records.append(record)
        state.by_phone.setdefault(number, []).append(record)
        delay = state.rng.uniform(state.settings.report_delay_min_s,
                                  state.settings.report_delay_max_s)
        loop.call_later(delay, _settle, ctx, state, record)
    state.by_biz[biz_id] = records
    state.counters["sent"] += len(records)
    return {"Code": "OK", "Message": "OK", "RequestId": call.request_id, "BizId": biz_id}


def _settle(ctx: SandboxContext, state: DysmsState, record: SendRecord) -> None:
    """The delivery outcome arrives: settle the record, then produce its receipt (or lose it)."""
    if record.biz_id not in state.by_biz:
        return  # sent before a reset: forgotten
    settings, rng = state.settings, state.rng
    record.receive_at = ctx.clock.now()
    if rng.random() < settings.failure_rate:
        record.status, (record.err_code, record.err_msg) = 2, rng.choice(settings.failure_codes)
    else:
        record.status, record.err_code, record.err_msg = 3, "DELIVERED", "用户接收成功"
    state.counters["settled"] += 1
    if rng.random() < settings.loss_rate:
        record.lost = True
        state.counters["lost"] += 1
        return
    copies = 2 if rng.random() < settings.duplicate_rate else 1
    state.counters["duplicates"] += copies - 1
    for _ in range(copies):
        produce(ctx, state, record)


def produce(ctx: SandboxContext, state: DysmsState, record: SendRecord) -> None:
    if state.settings.push_url:
        asyncio.get_running_loop().create_task(_push(state, record.report()))
        return
    queue = ctx.engine.queue_or_none(queue_name_for(record.account_id, "SmsReport"))
    if queue is None:
        state.counters["undeliverable"] += 1
        log.warning("dysms report dropped: no queue for account %s", record.account_id)
        return
    body, _md5 = encode_body(record.report())
    entry = SendEntry(body)
    queue.validate_entry(entry)
    queue.send(entry, ctx.clock.now_ms())
    state.counters["delivered"] += 1


async def _push(state: DysmsState, report: dict[str, Any]) -> None:
    """POSTs `[report]` to the push URL; re-pushes after each of `push_retry_s` if refused."""
    url = state.settings.push_url or ""
    if state.session is None:
        state.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    for wait_s in (0.0, *state.settings.push_retry_s):
        await asyncio.sleep(wait_s)
        try:
            async with state.session.post(url, json=[report]) as answer:
                body = await answer.json(content_type=None)
                if answer.status == 200 and isinstance(body, dict) and body.get("code") == 0:
                    state.counters["delivered"] += 1
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            log.info("dysms push failed: %s", type(exc).__name__)
        state.counters["push_retries"] += 1
    state.counters["undeliverable"] += 1


def query_send_details(call: AcsCall, ctx: SandboxContext) -> dict[str, Any]:
    """`QuerySendDetails`: one page of the records of a number on a day (and BizId)."""
    state = state_of(ctx)
    phone = _normalise(_required(call, "PhoneNumber"))
    day_text = _required(call, "SendDate")
    size_text, page_text = _required(call, "PageSize"), _required(call, "CurrentPage")
    if state.throttled(call.action):
        return _throttle_answer(call, state)
    day = _day(day_text, call.now)
    if day is None:
        return _business(call, "isv.INVALID_PARAMETERS", "SendDate must be yyyyMMdd within "
                         "the last 30 days")
    if not (size_text.isdigit() and 1 <= int(size_text) <= 50 and page_text.isdigit()
            and int(page_text) >= 1):
        return _business(call, "isv.INVALID_PARAMETERS", "PageSize must be 1-50, "
                         "CurrentPage >= 1")
    biz_id = call.params.get("BizId", "")
    found = [r for r in state.by_phone.get(phone, ()) if _shanghai_day(r.send_at) == day
             and (not biz_id or r.biz_id == biz_id)]
    size, page = int(size_text), int(page_text)
    shown = found[(page - 1) * size: page * size]
    state.counters["queries"] += 1
    return {
        "Code": "OK", "Message": "OK", "RequestId": call.request_id,
        "TotalCount": str(len(found)),
        "SmsSendDetailDTOs": {"SmsSendDetailDTO": [r.detail() for r in shown]},
    }


def _shanghai_day(epoch_s: float) -> dt.date:
    return dt.datetime.fromtimestamp(epoch_s, SHANGHAI).date()


def _day(text: str, now: float) -> dt.date | None:
    """The date of a yyyyMMdd text when it is within the query window, else None."""
    try:
        day = dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None
    today = _shanghai_day(now)
    return day if 0 <= (today - day).days <= QUERY_WINDOW_DAYS else None


for _action in (
    AcsAction("SendSms", DYSMSAPI_VERSION, HOST_ID, send_sms),
    AcsAction("SendBatchSms", DYSMSAPI_VERSION, HOST_ID, send_batch_sms),
    AcsAction("QuerySendDetails", DYSMSAPI_VERSION, HOST_ID, query_send_details),
):
    register_action(_action)

"""What the `err_code` of a delivery report means, as far as it is publicly known.

Sources, and how far each is trusted:

* the CMPP / SMPP final message states (`DELIVRD`, `UNDELIV`, `EXPIRED`, `REJECTD`, `DELETED`,
  `UNKNOWN`): the standard state names that carriers' gateways put into status reports and
  that Alibaba Cloud passes on; their meaning is the protocol's, not a carrier's guess;
* `DELIVERED`: the err_code of a successful SmsReport in Alibaba Cloud's own sample;
* `isv.*` / `isp.*`: Alibaba Cloud SMS API error codes, which also appear as `ErrCode` in
  `QuerySendDetails` records (and so in reconciled receipts); meanings as on the SMS error
  code page of the Alibaba Cloud documentation.

Carrier-specific codes such as `MK:0001`, `IC:0015` or `DB:0141` (a two-letter family, a
colon and four digits) are *not* given a meaning: Alibaba Cloud does not publish a table for
them, and the tables that circulate differ between carriers and gateways. `describe` says so,
and the platform's own `err_msg` of the receipt (kept by the stats) is the better hint there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["KNOWN_CODES", "ErrCodeInfo", "describe"]

KNOWN_CODES: Mapping[str, str] = MappingProxyType({
    # Successful delivery.
    "DELIVERED": "delivered to the handset (Alibaba Cloud's success code)",
    "DELIVRD": "delivered to the handset (CMPP/SMPP state)",
    # CMPP/SMPP final states of an undelivered message.
    "UNDELIV": "undeliverable: the carrier could not deliver it (CMPP/SMPP state)",
    "EXPIRED": "expired: not delivered within the validity period, e.g. phone off or out of "
               "coverage for long (CMPP/SMPP state)",
    "REJECTD": "rejected by the carrier's gateway (CMPP/SMPP state)",
    "DELETED": "deleted before delivery (CMPP/SMPP state)",
    "UNKNOWN": "final state unknown to the carrier (CMPP/SMPP state)",
    # Alibaba Cloud SMS API codes (QuerySendDetails ErrCode, reconciled receipts).
    "isv.MOBILE_NUMBER_ILLEGAL": "invalid phone number format",
    "isv.MOBILE_COUNT_OVER_LIMIT": "too many phone numbers in one request",
    "isv.BUSINESS_LIMIT_CONTROL": "sending rate limit for this number reached",
    "isv.DAY_LIMIT_CONTROL": "daily sending limit reached",
    "isv.AMOUNT_NOT_ENOUGH": "account balance insufficient",
    "isv.OUT_OF_SERVICE": "service suspended (account out of balance)",
    "isv.PRODUCT_UN_SUBSCRIPT": "SMS service not activated",
    "isv.ACCOUNT_NOT_EXISTS": "account does not exist",
    "isv.ACCOUNT_ABNORMAL": "account abnormal",
    "isv.SMS_TEMPLATE_ILLEGAL": "template not approved or does not exist",
    "isv.SMS_SIGNATURE_ILLEGAL": "signature not approved or does not exist",
    "isv.TEMPLATE_MISSING_PARAMETERS": "a template variable was given no value",
    "isv.INVALID_PARAMETERS": "invalid request parameters",
    "isv.INVALID_JSON_PARAM": "TemplateParam is not valid JSON with string values",
    "isv.BLACK_KEY_CONTROL_LIMIT": "a template variable holds a blocked keyword",
    "isv.PARAM_LENGTH_LIMIT": "a template variable is too long",
    "isv.PARAM_NOT_SUPPORT_URL": "URLs are not allowed in template variables",
    "isp.SYSTEM_ERROR": "platform system error",
})
"""Well-known codes and their meaning. Deliberately short: see the module docstring."""

# "MK:0001", "IC:0151", "DB:0141": a carrier gateway's code family and number.
_CARRIER_CODE = re.compile(r"^[A-Z]{2}:\d{4}$")


@dataclass(frozen=True, slots=True)
class ErrCodeInfo:
    """One code's description. `known` is False when `meaning` is only a classification."""

    code: str
    meaning: str
    known: bool


def describe(code: str) -> ErrCodeInfo:
    """The meaning of `code` (exact match, then case-insensitive), or an honest "unknown".

    Never raises; an empty code is described as "no error code in the receipt".
    """
    if not code:
        return ErrCodeInfo(code, "no error code in the receipt", False)
    meaning = KNOWN_CODES.get(code)
    if meaning is None:
        folded = code.casefold()
        meaning = next((m for c, m in KNOWN_CODES.items() if c.casefold() == folded), None)
    if meaning is not None:
        return ErrCodeInfo(code, meaning, True)
    if _CARRIER_CODE.match(code):
        return ErrCodeInfo(code, "carrier-specific code %s: meaning not published" % code[:2],
                           False)
    return ErrCodeInfo(code, "unknown code", False)

"""The one factory of Alibaba Cloud Tea (OpenAPI) client configurations: the Dybaseapi token
client (consumer.clients.tokens_sdk), the Dysmsapi client of reconcile and of the demo.

`tea_config` signs with an `AccessKey` (a default-chain key through its credentials client,
which renews role credentials by itself), sets the endpoint, protocol, region and timeouts,
and keeps the Tea SDK's loggers above DEBUG: with the DEBUG environment variable set they
would dump request headers, an STS key's x-acs-security-token among them.
"""

from __future__ import annotations

from alibabacloud_tea_openapi.models import Config

from consumer.clients.credentials import AccessKey, quiet_sdk_loggers

__all__ = ["ms", "tea_config"]


def ms(seconds: float) -> int:
    """Seconds as the whole milliseconds the Tea SDK takes (at least 1)."""
    return max(1, round(seconds * 1000))


def tea_config(key: AccessKey, endpoint: str, protocol: str, region_id: str, *,
               connect_timeout_s: float, read_timeout_s: float) -> Config:
    """A client configuration for `endpoint` ("host[:port]") over `protocol`, signing with
    `key`."""
    quiet_sdk_loggers()
    config = Config(endpoint=endpoint, protocol=protocol, region_id=region_id,
                    connect_timeout=ms(connect_timeout_s), read_timeout=ms(read_timeout_s))
    if key.credential_client is not None:
        config.credential = key.credential_client
    else:
        config.access_key_id = key.access_key_id
        config.access_key_secret = key.access_key_secret
        config.security_token = key.security_token
    return config

"""Per-key limits for LiteLLM's proxy without a database.

LiteLLM's virtual keys (with rpm_limit / tpm_limit) live in Postgres. The
database-free way to give each key its own limits is a custom auth hook
(`general_settings.custom_auth`): it maps the bearer key to a
`UserAPIKeyAuth` whose `rpm_limit` / `tpm_limit` LiteLLM's rate limiter
(parallel_request_limiter_v3, counters in the proxy's in-memory cache)
enforces with no flag. See https://docs.litellm.ai/docs/proxy/custom_auth.

The keys and limits mirror what `tollgate bench` configures for tollgate:
  tg-demo-enterprise  the load's key: limits far above any offered load
  tg-demo-free        the demo free tier (rpm=10, tpm=20000), for the
                      limits check that shows both proxies refuse alike
"""

from fastapi import Request
from litellm.proxy._types import UserAPIKeyAuth

# key -> (client id, requests per minute, tokens per minute)
LIMITS = {
    "tg-demo-enterprise": ("acme-enterprise", 100_000_000, 100_000_000_000),
    "tg-demo-free": ("acme-free", 10, 20_000),
}


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    entry = LIMITS.get(api_key.removeprefix("Bearer ").strip())
    if entry is None:
        raise Exception("unknown API key")
    client, rpm, tpm = entry
    return UserAPIKeyAuth(api_key=api_key, user_id=client, rpm_limit=rpm, tpm_limit=tpm)

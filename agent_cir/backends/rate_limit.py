"""The rate limit of a ``models:`` entry (``requests_per_second``) as LangChain's ``InMemoryRateLimiter``."""

from __future__ import annotations

from typing import Any

from agent_cir.config import ModelConfig


def rate_limiter(config: ModelConfig) -> Any:
    if not config.requests_per_second:
        return None
    from langchain_core.rate_limiters import InMemoryRateLimiter

    return InMemoryRateLimiter(
        requests_per_second=config.requests_per_second, check_every_n_seconds=0.05, max_bucket_size=1
    )

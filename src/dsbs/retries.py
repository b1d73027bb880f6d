"""Requests to a teacher that may fail for a while: which failures are worth another try, and the backoff."""

import random
import time

from dsbs.errors import MissingDependency, UserError


class RetryableError(Exception):
    """A failure worth another try: a timeout, 429, 5xx or an unreadable reply."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class TeacherStopped(UserError):
    """The run cannot go on: the teacher refuses our credentials, or answers cannot be stored."""


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * 2**attempt))


def call_with_retries(call, max_retries: int, sleep=time.sleep, max_retry_after: float = 60.0, on_capped=None):
    """call() until it succeeds, a non-retryable error, or max_retries retries.

    A server's Retry-After is honoured up to ``max_retry_after`` seconds (``on_capped`` hears of
    each cut): a server asking for a day's pause must not stall the run for a day.
    """
    for attempt in range(max_retries + 1):
        try:
            return call()
        except RetryableError as err:
            if attempt == max_retries:
                raise
            delay = err.retry_after if err.retry_after is not None else backoff_delay(attempt)
            if delay > max_retry_after:
                delay = max_retry_after
                if on_capped:
                    on_capped(err.retry_after)
            sleep(delay)


def seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None


def openai_server(config, what: str) -> tuple:
    """(the httpx module, the API key or "", the base URL) of the OpenAI-compatible server ``config`` names."""
    import os

    try:
        import httpx
    except ImportError:
        raise MissingDependency(f"{what} needs httpx: pip install 'dsbs[openai]'") from None
    key = os.environ.get(config.api_key_env) or ""
    return httpx, key, (config.base_url or "https://api.openai.com/v1").rstrip("/")

"""flowkit's LLM client: the OpenAI SDK's surface with retries, failover, shared rate limits,
token streaming into the run's stream, caching and a trace span per call.

    from flowkit.llm import OpenAI            # instead of: from openai import OpenAI
    client = OpenAI()                          # or flowkit.llm.wrap(openai.OpenAI(...))
    aclient = AsyncOpenAI()                    # the same, for async code
    client.chat.completions.create(model="gpt-4o-mini", messages=[...], stream=True)

The local OpenAI-compatible server for demos and tests is
:class:`flowkit.testing.FakeLLMServer` (``python -m flowkit.testing.fake_openai``).
"""

from ..errors import RateLimitWait
from .client import (
    FAKE_API_KEY,
    AsyncOpenAI,
    OpenAI,
    client_from_env,
    default_model,
    estimate_tokens,
    wrap,
)
from .pricing import cost, set_prices
from .providers import Provider, RateLimit
from .ratelimit import WAITING_MESSAGE, RateLimiter
from .retries import RetryPolicy, is_retryable
from .tools import (
    Tool,
    ToolLoopLimit,
    ToolLoopResult,
    UnknownTool,
    arun_tool_loop,
    run_tool_loop,
    tool,
)

__all__ = [
    "FAKE_API_KEY",
    "AsyncOpenAI",
    "OpenAI",
    "Provider",
    "RateLimit",
    "RateLimitWait",
    "RateLimiter",
    "RetryPolicy",
    "Tool",
    "ToolLoopLimit",
    "ToolLoopResult",
    "UnknownTool",
    "WAITING_MESSAGE",
    "arun_tool_loop",
    "client_from_env",
    "cost",
    "default_model",
    "estimate_tokens",
    "is_retryable",
    "run_tool_loop",
    "set_prices",
    "tool",
    "wrap",
]

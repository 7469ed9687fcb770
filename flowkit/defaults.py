"""Every tunable of flowkit, in one place.

Each name here can be overridden by an environment variable with the ``FLOWKIT_``
prefix (``FLOWKIT_HEARTBEAT_INTERVAL=2``) or by ``flowkit.configure(...)``.
"""

#: Redis holding runs, checkpoints, event streams, heartbeats and the cache.
REDIS_URL = "redis://127.0.0.1:6379/0"
#: Celery broker; empty means "the same Redis as REDIS_URL".
BROKER_URL = ""
#: Celery result backend (chords need one); empty means BROKER_URL.
RESULT_BACKEND = ""
#: Seconds a Redis command may block before the connection is deemed dead
#: (must exceed the longest blocking read: flowkit blocks for at most a few seconds).
REDIS_SOCKET_TIMEOUT = 60.0
#: How long a Redis command keeps being retried while Redis is unreachable (a restart),
#: in seconds, before flowkit gives up on it.
REDIS_RETRY_SECONDS = 30.0
#: ``flowkit.wait()`` is woken when its run ends (a message on the run's done channel);
#: it also re-reads the run this often, in seconds, in case that message was lost.
WAIT_RECHECK_SECONDS = 5.0
#: Prefix of every Redis key flowkit writes, so several apps can share one Redis.
KEY_PREFIX = "flowkit"

#: How long run records, event streams and checkpoints live after their last write.
RETENTION_SECONDS = 7 * 24 * 3600
#: A finished run's event stream and trace are compacted into one compressed archive this
#: many seconds after it ended (beat's sweep); reads are the same either way.
COMPACT_AFTER_SECONDS = 300.0
#: Largest workflow input, step output or event payload accepted, in bytes.
MAX_PAYLOAD_BYTES = 1024 * 1024

#: Seconds between two heartbeats of a worker running a step.
HEARTBEAT_INTERVAL = 2.0
#: A run whose step heartbeat is older than this is considered lost.
HEARTBEAT_LAPSE = 8.0
#: Beat running steps' leases from a process of their own (engine.keeper), so a step that
#: holds the GIL (or a gevent step that does not yield) does not stop its worker's beats.
HEARTBEAT_KEEPER = True
#: A worker process whose heartbeat thread has not run for this long (a C call holding the
#: GIL, a gevent step that never yields) is taken as wedged: the keeper lets its leases lapse.
HEARTBEAT_STALL = 300.0
#: How often beat runs the reaper, in seconds.
REAPER_INTERVAL = 3.0
#: Restarts of one run before the reaper gives up and fails it.
MAX_RESTARTS = 3
#: A run still ``queued`` after this many seconds is enqueued again (message lost).
QUEUED_TIMEOUT = 300.0
#: A running run with no step in flight and no activity for this long is re-driven.
STALL_TIMEOUT = 900.0

#: Redis visibility timeout of the Celery broker; must exceed every step timeout.
VISIBILITY_TIMEOUT = 3600
#: Broker and result-backend connections a worker process may open (an I/O pool of
#: N slots needs about N).
CONNECTION_POOL_SIZE = 1000
#: Celery queue of steps that name none.
DEFAULT_QUEUE = "flowkit"
#: Longest agent loop (chain of continuations) before the run fails.
MAX_CONTINUATIONS = 200
#: A worker that finishes a step runs the next step of its chain itself (same queue)
#: while its task has run less than this many seconds; then it sends the rest as a
#: message, yielding the worker to other runs. 0: always send a message.
INLINE_STEPS_SECONDS = 0.05

#: Default retry policy of a component: one attempt, no retry.
RETRY_ATTEMPTS = 1
RETRY_INITIAL = 1.0
RETRY_MAXIMUM = 30.0

#: How long an event sent with ``flowkit.send_event`` is kept for waits that begin later
#: and look back (``wait_for_event(..., lookback=...)`` can look back this far at most).
EVENT_LOOKBACK_SECONDS = 3600.0

#: The longest event key (``wait_for_event``, ``send_event``, ``POST /events/<key>``).
EVENT_KEY_MAX_CHARS = 200
#: Longest name an input (``wait_for_input``) may have.
INPUT_NAME_MAX_CHARS = 200
#: Most characters of field messages a failed output check writes into the run's error.
OUTPUT_ERROR_MAX_CHARS = 2000

#: Seconds a worker waits for running steps on SIGTERM before handing them over.
DRAIN_GRACE = 30.0
#: URL that receives a JSON POST once per failed run (a step gave up, or the reaper did).
FAILURE_WEBHOOK = ""
#: Seconds the failure webhook may take to answer before it counts as failed (logged).
FAILURE_WEBHOOK_TIMEOUT = 5.0

# -- Metrics (flowkit.metrics) ---------------------------------------------------
#: A worker serves its Prometheus metrics over HTTP on this port (its main process, for
#: every pool child); 0: it serves none. The web process serves them at ``GET /metrics``.
METRICS_PORT = 0
#: Address the worker's metrics server listens on.
METRICS_ADDR = "0.0.0.0"
#: The worker's metrics also carry the deployment's (runs by state, queues, counters kept
#: in Redis), which ``GET /metrics`` of the web process serves: for a deployment without a
#: web process. Turn it on for one process only, or sums count them twice.
METRICS_DEPLOYMENT = False
#: Seconds a scrape of the deployment's metrics may take in all (Prometheus gives up after
#: its scrape_timeout, 10 s by default), of which Redis may take half: a Redis or broker that
#: takes connections but never answers (frozen) is said as down (``flowkit_*_up 0``) in time.
METRICS_SCRAPE_SECONDS = 8.0
#: Seconds a broker read of queue depths (the scrape's, the reaper's) waits for an answer.
BROKER_READ_TIMEOUT = 4.0

# -- API plane (flowkit.api) ----------------------------------------------------
#: Bearer API keys that may use every endpoint, comma-separated. Empty: none.
API_KEYS = ""
#: Open the API to requests without credentials. For local development only.
API_OPEN = False
#: Secret that signs run-scoped tokens; empty falls back to the Flask app's SECRET_KEY.
API_SECRET = ""
#: Lifetime of a run-scoped token, in seconds.
API_TOKEN_TTL = 24 * 3600
#: URL prefix of the blueprint mounted by ``FlowKit(app)``.
API_URL_PREFIX = ""
#: Workflows the API serves, comma-separated (empty: every registered workflow).
API_WORKFLOWS = ""
#: How long the API retries an unreachable Redis before it answers 503 (workers keep
#: FLOWKIT_REDIS_RETRY_SECONDS: they ride out a restart; a person waiting on the API should not).
API_REDIS_RETRY_SECONDS = 2.0
#: Largest request body the API reads, in bytes (a larger one gets 413).
API_MAX_BODY_BYTES = 1024 * 1024
#: Longest synchronous invocation (``?wait=`` / ``Prefer: wait=``), in seconds.
API_MAX_WAIT = 60.0
#: Seconds between keep-alive pings on idle WebSocket and SSE connections.
API_PING_INTERVAL = 20.0
#: Runs per page of ``GET /runs`` when the client names none, and the most it may ask.
API_PAGE_SIZE = 50
API_MAX_PAGE_SIZE = 500
#: Most events per page of ``GET /runs/<id>/events`` (and per history read of the relay).
API_EVENTS_PAGE = 1000
#: Events a relay subscriber may have queued before it catches up from Redis instead.
API_SUBSCRIBER_BUFFER = 10000
#: Streams (SSE, WebSocket, a start's ``?wait=``) one run's tokens, or one owner-scoped
#: caller, may hold open at once in a web process (each holds a thread); 0: no limit.
#: API keys are not counted.
API_STREAMS_PER_CALLER = 32
#: ``GET /metrics`` without credentials (a scraper inside a private network); else it
#: needs an API key (``authorization`` in Prometheus's scrape config) or the host app's
#: ``authorize`` callback granting full access.
API_METRICS_OPEN = False
#: Other origins whose pages may change things through the API (POST, DELETE) and open
#: its WebSockets, comma-separated (``https://app.example.com``); the API's own origin
#: always may. A browser request from any other site is refused (403 ``cross_site``).
API_TRUSTED_ORIGINS = ""
#: Serve the dashboard (runs, a run, workers) from the API's blueprint; ``false`` turns it
#: off. Its pages read nothing without the API's own credentials.
API_UI = True
#: Where the dashboard is served, under the blueprint's prefix.
API_UI_PATH = "/ui"

# -- LLM client and traces (flowkit.llm, flowkit.trace) --------------------------
#: Attempts of one LLM call on one provider before failing over to the next.
LLM_RETRY_ATTEMPTS = 4
#: Exponential backoff (with full jitter) between those attempts, in seconds.
LLM_RETRY_INITIAL = 0.5
LLM_RETRY_MAXIMUM = 20.0
#: Longest provider ``Retry-After`` waited out; a longer one fails over at once.
LLM_MAX_RETRY_AFTER = 60.0
#: Timeout of one HTTP request to a provider, in seconds.
LLM_TIMEOUT = 120.0
#: HTTP connection pools per endpoint and process, used in turn (one pool slows
#: down quadratically with hundreds of concurrent calls).
LLM_CONNECTION_POOLS = 32
#: Longest wait for a shared rate-limit budget before the provider counts as saturated.
LLM_RATE_MAX_WAIT = 300.0
#: Completion tokens assumed for the rate limiter when a request sets no max_tokens.
LLM_COMPLETION_ESTIMATE = 256
#: Streamed tokens are sent to the run's stream in chunks of this many characters...
LLM_STREAM_FLUSH_CHARS = 64
#: ...or after this many seconds, whichever comes first.
LLM_STREAM_FLUSH_SECONDS = 0.1
#: The LLM the demo and ``flowkit.llm.client_from_env()`` use when OPENAI_API_KEY is unset.
LLM_FAKE_URL = "http://127.0.0.1:8765/v1"
#: Model used when a caller names none (``client_from_env``).
LLM_MODEL = "gpt-4o-mini"
#: USD per million tokens, ``{"model": [input, output, cached input]}`` as JSON (the third
#: optional: cached input at the input price without it), for a call's estimated cost.
LLM_PRICES = (
    '{"gpt-4o-mini": [0.15, 0.6, 0.075], "gpt-4o": [2.5, 10.0, 1.25],'
    ' "gpt-4.1-mini": [0.4, 1.6, 0.1], "gpt-4.1": [2.0, 8.0, 0.5],'
    ' "gpt-4.1-nano": [0.1, 0.4, 0.025], "text-embedding-3-small": [0.02, 0.0],'
    ' "text-embedding-3-large": [0.13, 0.0]}'
)
#: Longest text kept for one field (input, output, prompt) of a trace span.
TRACE_MAX_FIELD_CHARS = 4000
#: Longest a running step's trace records (its opening record, its LLM calls) wait to be
#: written in a batch; a step's closing record is written at once, with all that waits.
TRACE_FLUSH_SECONDS = 0.2

#: Where ``flowkit dev`` found the API mounted in the user's ``--web`` app when it started
#: (its banner's FLOWKIT_URL): the web process refuses a reload that moved it.
DEV_API_PREFIX_VARIABLE = "FLOWKIT_DEV_API_PREFIX"

#: The node name of ``flowkit dev``'s worker (``dev-<web port>@host``): a deployment whose
#: last worker was one is a dev loop, where a worker that is down needs a fix of the code.
DEV_NODE_PATTERN = r"dev-\d+@"

#: How long a worker that meets a workflow or a step its code does not define (a rolling
#: deploy's old release, beside workers of the new one) waits before it hands the message
#: back to the queue: the next taker may be old code too.
HAND_BACK_SECONDS = 1.0

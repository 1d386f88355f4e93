"""The middleware's settings, read from environment variables.

vLLM builds a ``--middleware`` class with the app as its only argument, so
every setting comes from the environment of the ``vllm serve`` process:

==========================  ======================  ==========================================
Variable                    Default                 Meaning
==========================  ======================  ==========================================
KVGATE_ADDRESS              unix:/tmp/kvgate.sock   kvgated's gRPC address (unix:/path or host:port)
KVGATE_MODEL                (unset)                 model name sent to kvgated instead of the body's "model"
KVGATE_FAIL_OPEN            false                   kvgated unreachable: true forwards, false answers 503
KVGATE_TIMEOUT_S            30                      longest an Admit may take, queueing included
KVGATE_MAX_QUEUE_WAIT_S     timeout - margin        longest a request waits in kvgated's queue
KVGATE_MAX_MODEL_LEN        0 (unknown)             the engine's max_model_len (vLLM's --max-model-len)
KVGATE_DEFAULT_MAX_TOKENS   0 (unset)               max_tokens for a body that sets none, written into it
KVGATE_BYTES_PER_TOKEN      4                       UTF-8 bytes per prompt token when estimating
KVGATE_TRUST_TOKEN_COUNT_HEADER  false              read the prompt token count from the header below
KVGATE_TOKEN_COUNT_HEADER   x-kvgate-prompt-tokens  header with the request's prompt token count
KVGATE_TENANT_HEADER        x-kvgate-tenant         header naming the tenant for fairness
KVGATE_PRIORITY_HEADER      x-kvgate-priority       header: critical, standard or sheddable
KVGATE_RENEW_INTERVAL_S     60                      renew the lease this often while a response runs
KVGATE_TOKEN_FILE           (unset)                 file holding the bearer token for kvgated's auth.tokens
KVGATE_TLS                  false                   TLS to kvgated (implied by the files below)
KVGATE_TLS_CA_FILE          (system roots)          PEM CA bundle kvgated's certificate must chain to
KVGATE_TLS_CERT_FILE        (unset)                 PEM client certificate, for mutual TLS
KVGATE_TLS_KEY_FILE         (unset)                 PEM key of KVGATE_TLS_CERT_FILE
KVGATE_TLS_SERVER_NAME      (the address's host)    name kvgated's certificate must carry
==========================  ======================  ==========================================

KVGATE_FAIL_OPEN covers transport failures only (kvgated unreachable,
connection refused, no connection by the deadline): an answer from kvgated
that refuses the middleware (UNAUTHENTICATED, PERMISSION_DENIED), a failed
TLS handshake or any other error is never forwarded ungated.

Requests are sized by kvgate.openai_request's rules (the Envoy ext_proc
gate's too): without a max, chat gets max_model_len - prompt and legacy
completions 16, unless KVGATE_DEFAULT_MAX_TOKENS is set; a chat request
without a max needs one of KVGATE_MAX_MODEL_LEN or KVGATE_DEFAULT_MAX_TOKENS
(else it is answered 500).
"""

import dataclasses
import os
from typing import Mapping, Optional

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the middleware reaches kvgated and shapes its Admit calls."""

    address: str = "unix:/tmp/kvgate.sock"
    # Model name sent to kvgated for every request; None uses the body's.
    model: Optional[str] = None
    fail_open: bool = False
    timeout_s: float = 30.0
    # None: timeout_s less a margin, so that kvgated answers QUEUE_TIMEOUT
    # (with retry_after) before the gRPC deadline cuts the call.
    max_queue_wait_s: Optional[float] = None
    # The engine's context limit (vLLM's --max-model-len); 0: unknown.
    max_model_len: int = 0
    # When > 0: max new tokens of a request that sets none, written into the
    # body forwarded to the engine. 0: the engine's own rule.
    default_max_tokens: int = 0
    # About 4 bytes of English text per token for BPE tokenizers of the GPT
    # and Llama families (OpenAI's "What are tokens" help article: "1 token
    # ~= 4 chars in English"). Non-Latin scripts run lower; send the token
    # count header when the estimate matters.
    bytes_per_token: float = 4.0
    # Read the prompt token count from token_count_header. Off by default:
    # any client can send the header; turn it on only behind a gateway that
    # tokenizes and strips client-sent values.
    trust_token_count_header: bool = False
    token_count_header: str = "x-kvgate-prompt-tokens"
    tenant_header: str = "x-kvgate-tenant"
    priority_header: str = "x-kvgate-priority"
    renew_interval_s: float = 60.0
    # Credentials for kvgated (kvgate.client.Credentials.load reads them).
    token_file: Optional[str] = None
    tls: bool = False
    tls_ca_file: Optional[str] = None
    tls_cert_file: Optional[str] = None
    tls_key_file: Optional[str] = None
    tls_server_name: Optional[str] = None

    def __post_init__(self):
        if self.timeout_s <= 0:
            raise ValueError(f"KVGATE_TIMEOUT_S must be > 0, got {self.timeout_s}")
        if self.max_queue_wait_s is not None and self.max_queue_wait_s < 0:
            raise ValueError(
                f"KVGATE_MAX_QUEUE_WAIT_S must be >= 0, got {self.max_queue_wait_s}")
        if self.default_max_tokens < 0:
            raise ValueError(
                f"KVGATE_DEFAULT_MAX_TOKENS must be >= 0, got {self.default_max_tokens}")
        if self.max_model_len < 0:
            raise ValueError(
                f"KVGATE_MAX_MODEL_LEN must be >= 0, got {self.max_model_len}")
        if self.bytes_per_token <= 0:
            raise ValueError(
                f"KVGATE_BYTES_PER_TOKEN must be > 0, got {self.bytes_per_token}")
        if self.renew_interval_s <= 0:
            raise ValueError(
                f"KVGATE_RENEW_INTERVAL_S must be > 0, got {self.renew_interval_s}")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("KVGATE_TLS_CERT_FILE and KVGATE_TLS_KEY_FILE go "
                             "together (mutual TLS)")

    @property
    def queue_wait_s(self) -> float:
        """The max_queue_wait sent with Admit."""
        if self.max_queue_wait_s is not None:
            return min(self.max_queue_wait_s, self.timeout_s)
        margin = min(0.5, self.timeout_s * 0.1)
        return self.timeout_s - margin

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Settings":
        """Settings from KVGATE_* variables; raises ValueError naming a bad one."""
        d = cls()
        return cls(
            address=env.get("KVGATE_ADDRESS") or d.address,
            model=env.get("KVGATE_MODEL") or None,
            fail_open=_bool(env, "KVGATE_FAIL_OPEN", d.fail_open),
            timeout_s=_number(env, "KVGATE_TIMEOUT_S", float, d.timeout_s),
            max_queue_wait_s=_number(env, "KVGATE_MAX_QUEUE_WAIT_S", float, None),
            max_model_len=_number(env, "KVGATE_MAX_MODEL_LEN", int,
                                  d.max_model_len),
            default_max_tokens=_number(env, "KVGATE_DEFAULT_MAX_TOKENS", int,
                                       d.default_max_tokens),
            trust_token_count_header=_bool(env, "KVGATE_TRUST_TOKEN_COUNT_HEADER",
                                           d.trust_token_count_header),
            bytes_per_token=_number(env, "KVGATE_BYTES_PER_TOKEN", float,
                                    d.bytes_per_token),
            token_count_header=_header(env, "KVGATE_TOKEN_COUNT_HEADER",
                                       d.token_count_header),
            tenant_header=_header(env, "KVGATE_TENANT_HEADER", d.tenant_header),
            priority_header=_header(env, "KVGATE_PRIORITY_HEADER", d.priority_header),
            renew_interval_s=_number(env, "KVGATE_RENEW_INTERVAL_S", float,
                                     d.renew_interval_s),
            token_file=env.get("KVGATE_TOKEN_FILE") or None,
            tls=_bool(env, "KVGATE_TLS", d.tls),
            tls_ca_file=env.get("KVGATE_TLS_CA_FILE") or None,
            tls_cert_file=env.get("KVGATE_TLS_CERT_FILE") or None,
            tls_key_file=env.get("KVGATE_TLS_KEY_FILE") or None,
            tls_server_name=env.get("KVGATE_TLS_SERVER_NAME") or None,
        )


def _bool(env, name, default):
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


def _number(env, name, kind, default):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def _header(env, name, default):
    # ASGI gives header names in lower case.
    return (env.get(name) or default).strip().lower()

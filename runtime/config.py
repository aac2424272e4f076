"""`config.toml`: read once at start, structured into frozen attrs classes by cattrs.

A bad file stops the start with every problem listed by path (`providers[1].base_url: ...`),
never a traceback. `load_config` is the only entry point; `ConfigError.problems` holds the list.
"""

from __future__ import annotations

import os
import re
import typing
import urllib.parse
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
import httpx

from events.money import usd_input
from policies.breaker import BreakerConfig
from policies.cost import Price
from policies.routing import Deployment, RoutingIndex
from policies.tenant import POLICY_FIELDS, TenantPolicy, reference_problems
from providers.anthropic import AnthropicSettings
from providers.simulator import SimulatorSettings
from providers.upstream import Timeouts

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python < 3.11 (hypercorn's fallback)
    import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]

DEFAULT_PATH = "config.toml"
PROVIDER_KINDS = ("simulator", "openai", "anthropic")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@attrs.frozen
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8080, validator=[attrs.validators.ge(0), attrs.validators.le(65535)])
    grace_period_s: float = attrs.field(default=10.0, validator=attrs.validators.ge(0))
    max_body_bytes: int = attrs.field(default=8 * 1024 * 1024, validator=attrs.validators.ge(1024))
    body_timeout_s: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    tenant_idle_s: float = attrs.field(default=300.0, validator=attrs.validators.gt(0))
    lease_idle_s: float = attrs.field(default=2.0, validator=attrs.validators.gt(0))
    """A tenant actor with nothing in flight this long gives its budget leases back (`LeaseReturned`)."""
    lease_s: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    """A budget lease's `expires_at`: a survivor expires the lease of a gone instance no sooner."""
    write_timeout_s: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    header_timeout_s: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    workers: int = attrs.field(default=1, validator=[attrs.validators.ge(1), attrs.validators.le(64)])
    """Worker processes `tollgate serve` runs on the one listening port (each a full gateway)."""


@attrs.frozen
class MetricsConfig:
    """`GET /metrics` (Prometheus text format): on the API port, or on its own `port` when set."""

    enabled: bool = True
    port: int | None = attrs.field(
        default=None, validator=attrs.validators.optional([attrs.validators.ge(0), attrs.validators.le(65535)])
    )
    require_admin_key: bool = False
    """When true, a scrape must send `Authorization: Bearer <admin key>` (401 otherwise), on either port."""


@attrs.frozen
class TracingConfig:
    """OpenTelemetry traces over OTLP/HTTP: on when `enabled`, or when OTEL_EXPORTER_OTLP_ENDPOINT is set."""

    enabled: bool = False


@attrs.frozen
class LoggingConfig:
    """The access log (one line per request, logger `tollgate.access`) and the gateway's log level."""

    format: Literal["json", "text"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access: bool = True
    """The access log's one line per request; false writes none (and does no work for it)."""


@attrs.frozen
class AlertsConfig:
    """Budget alerts (50/80/100 % of a period's budget) POSTed as JSON to `webhook_url`, with retries."""

    webhook_url: str | None = None
    max_attempts: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    backoff_s: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    timeout_s: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))


@attrs.frozen
class LedgerConfig:
    """Where the ledger is: `url` (`sqlite:///var/ledger.sqlite3`, `sqlite:////abs/path`,
    `postgresql://USER@HOST:PORT/DB`) or its short form `path` (a SQLite file). A PostgreSQL
    password comes from the environment variable named by `password_env`, never from the file."""

    path: str = "var/ledger.sqlite3"
    url: str | None = None
    password_env: str | None = None
    poll_s: float = attrs.field(default=0.05, validator=attrs.validators.gt(0))
    """How often a process reads the log for other processes' events when nothing wakes it sooner:
    SQLite's only way; on PostgreSQL the fallback behind LISTEN/NOTIFY (a longer one is fine there)."""

    @property
    def side_path(self) -> str:
        """The SQLite database of the side tables (the response cache, stored Responses turns): the
        ledger's own file, or — with a PostgreSQL ledger — the local file `path` (per machine)."""
        location = self.location
        return self.path if location.startswith(("postgresql://", "postgres://")) else location

    @property
    def location(self) -> str:
        """What `events.store.LedgerStore` opens: a SQLite path, `:memory:` or a PostgreSQL URL."""
        if self.url is None:
            return self.path
        if self.url.startswith(SQLITE_PREFIX):
            return self.url[len(SQLITE_PREFIX) :]
        return self.url

    def password(self, environ: Mapping[str, str] | None = None) -> str:
        environ = os.environ if environ is None else environ
        return environ.get(self.password_env, "") if self.password_env else ""


SQLITE_PREFIX = "sqlite:///"


def check_ledger(ledger: LedgerConfig, environ: Mapping[str, str]) -> list[str]:
    problems = []
    url = ledger.url
    if url is not None:
        if url.startswith(SQLITE_PREFIX):
            if not url[len(SQLITE_PREFIX) :]:
                problems.append("ledger.url: expected sqlite:///PATH with a file path")
        elif url.startswith(("postgresql://", "postgres://")):
            parts = urllib.parse.urlsplit(url)
            try:
                parts.port  # noqa: B018 — parsing it validates it
            except ValueError:
                problems.append("ledger.url: the port must be a number")
            if parts.password is not None:
                problems.append("ledger.url: put the password in an environment variable named by ledger.password_env")
            elif not parts.hostname or not parts.username or not parts.path.strip("/"):
                problems.append("ledger.url: expected postgresql://USER@HOST:PORT/DATABASE")
        else:
            problems.append("ledger.url: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE")
    if ledger.password_env is not None and ledger.password_env not in environ:
        problems.append(f"ledger.password_env: environment variable {ledger.password_env} is not set")
    return problems


@attrs.frozen
class CacheConfig:
    """The response cache's side table in the ledger database (tenants opt in with their `cache` policy)."""

    max_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=attrs.validators.ge(0))
    """Bound on the stored answers' total size; the least recently used go first (0: store nothing)."""


@attrs.frozen
class ResponsesConfig:
    """`[responses]`: how long Tollgate keeps a stored Responses API conversation (`store`, the default)."""

    retention_s: float = attrs.field(default=30 * 86400.0, validator=attrs.validators.gt(0))


@attrs.frozen
class AdminConfig:
    api_key_env: str = "TOLLGATE_ADMIN_KEY"


@attrs.frozen
class ModelAlias:
    deployments: tuple[Deployment, ...]
    max_output_tokens: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1))
    )


@attrs.frozen
class ProviderConfig:
    name: str
    kind: Literal["simulator", "openai", "anthropic"]
    models: tuple[str, ...] = ()
    base_url: str | None = None
    api_key_env: str | None = None
    headers: dict[str, str] = attrs.field(factory=dict)
    max_concurrency: int = attrs.field(default=256, validator=attrs.validators.ge(1))
    max_output_tokens: int = attrs.field(default=4096, validator=attrs.validators.ge(1))
    max_retries: int = attrs.field(default=1, validator=attrs.validators.ge(0))
    retry_backoff_s: float = attrs.field(default=0.25, validator=attrs.validators.ge(0))
    max_retry_wait_s: float = attrs.field(default=10.0, validator=attrs.validators.ge(0))
    breaker: BreakerConfig = BreakerConfig()
    timeouts: Timeouts = Timeouts()
    responses: bool = False
    """An `openai`-kind provider that serves the Responses API itself: `POST /v1/responses` is passed
    through to its `{base_url}/responses` (false: translated to chat completions, as for every other kind)."""
    simulator: SimulatorSettings = SimulatorSettings()
    anthropic: AnthropicSettings = AnthropicSettings()


@attrs.frozen(kw_only=True)
class TenantConfig(TenantPolicy):
    """A `[[tenants]]` entry: who, which key, and the policy fields of `policies.tenant`."""

    name: str
    api_key_sha256: str | None = None
    api_key_env: str | None = None
    enabled: bool = True

    def policy(self) -> TenantPolicy:
        return TenantPolicy(**{name: getattr(self, name) for name in POLICY_FIELDS})


@attrs.frozen
class Config:
    server: ServerConfig = ServerConfig()
    ledger: LedgerConfig = LedgerConfig()
    cache: CacheConfig = CacheConfig()
    responses: ResponsesConfig = ResponsesConfig()
    admin: AdminConfig = AdminConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    tracing: TracingConfig = TracingConfig()
    alerts: AlertsConfig = AlertsConfig()
    providers: tuple[ProviderConfig, ...] = ()
    models: dict[str, ModelAlias] = attrs.field(factory=dict)
    pricing: dict[str, Price] = attrs.field(factory=dict)
    tenants: tuple[TenantConfig, ...] = ()
    source: str = "<defaults>"

    def routing_index(self) -> RoutingIndex:
        """The public model names this config serves: each provider's `models`, then the aliases."""
        return RoutingIndex.build(
            [(p.name, p.models) for p in self.providers],
            {name: alias.deployments for name, alias in self.models.items()},
        )


def _structure_decimal(value: Any, _: type) -> Decimal:
    return usd_input(value)


def _structure_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _structure_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _structure_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _structure_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(Decimal, _structure_decimal)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(bool, _structure_bool)
    return converter


converter = make_converter()


def _format_exception(error: BaseException, type_: type | None) -> str:
    if isinstance(error, ValueError) and str(error):
        return str(error)
    if isinstance(error, KeyError):
        return "required field missing"
    if typing.get_origin(type_) is Literal:
        return f"expected one of {', '.join(map(repr, typing.get_args(type_)))}"
    return cattrs.v.format_exception(error, type_)


def _path(path: str) -> str:
    """`$.pricing['sim/sim-1'].x` → `pricing."sim/sim-1".x` (TOML's own spelling)."""
    path = re.sub(r"\['([A-Za-z0-9_-]+)'\]", r".\1", path)
    path = re.sub(r"\['([^']*)'\]", r'."\1"', path)
    return path.lstrip("$").lstrip(".") or "<top>"


def format_problems(error: BaseException) -> list[str]:
    problems = []
    for line in cattrs.transform_error(error, path="$", format_exception=_format_exception):  # type: ignore[arg-type]
        message, _, path = line.rpartition(" @ ")
        problems.append(f"{_path(path)}: {message}")
    return problems


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str], source: str = "<memory>") -> Config:
    """Structure and check a decoded config; raise `ConfigError` listing every problem."""
    try:
        config = converter.structure({**data}, Config)
    except (cattrs.BaseValidationError, ValueError, TypeError) as error:
        raise ConfigError(format_problems(error)) from None
    config = attrs.evolve(config, source=source)
    problems = check_config(config, environ)
    if problems:
        raise ConfigError(problems)
    return config


def _read(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> tuple[Path, dict[str, Any]]:
    path = Path(path or environ.get("TOLLGATE_CONFIG") or DEFAULT_PATH)
    try:
        with path.open("rb") as file:
            return path, tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except OSError as error:
        raise ConfigError([f"{path}: cannot read ({error.strerror})"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{path}: not valid TOML ({error})"]) from None


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    path, data = _read(path, environ)
    return parse_config(data, environ, str(path))


def load_ledger_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> LedgerConfig:
    """Only the `[ledger]` table, checked: all that the offline commands (`replay --verify`,
    `reprice --offline`) read. The rest of the file is not checked — they call no provider and
    authenticate no tenant, so they need none of its secrets in the environment."""
    environ = os.environ if environ is None else environ
    path, data = _read(path, environ)
    try:
        ledger = converter.structure({"ledger": data.get("ledger", {})}, Config).ledger
    except (cattrs.BaseValidationError, ValueError, TypeError) as error:
        raise ConfigError(format_problems(error)) from None
    problems = check_ledger(ledger, environ)
    if problems:
        raise ConfigError(problems)
    return ledger


def _check_url(url: str) -> str | None:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "expected a URL such as http://127.0.0.1:8000/v1"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "expected an http:// or https:// URL with a host"
    return None


def check_config(config: Config, environ: Mapping[str, str]) -> list[str]:
    """The checks types cannot express: names, references, URLs and secrets in the environment."""
    problems: list[str] = check_ledger(config.ledger, environ)
    seen: set[str] = set()
    for index, provider in enumerate(config.providers):
        where = f"providers[{index}]"
        if not _NAME.match(provider.name):
            problems.append(f"{where}.name: expected letters, digits, '.', '_' or '-', got {provider.name!r}")
        if provider.name in seen:
            problems.append(f"{where}.name: duplicate provider name {provider.name!r}")
        seen.add(provider.name)
        if provider.kind not in PROVIDER_KINDS:
            problems.append(
                f"{where}.kind: {provider.kind!r} is not supported yet (use one of {', '.join(PROVIDER_KINDS)})"
            )
        if provider.kind == "simulator":
            if provider.base_url is not None:
                problems.append(f"{where}.base_url: a simulator has no base_url")
        elif provider.base_url is None:
            if provider.kind != "anthropic":  # defaults to providers.anthropic.DEFAULT_BASE_URL
                problems.append(f"{where}.base_url: required for kind {provider.kind!r}")
        else:
            problem = _check_url(provider.base_url)
            if problem:
                problems.append(f"{where}.base_url: {problem}")
        if provider.responses and provider.kind != "openai":
            problems.append(f"{where}.responses: only an 'openai'-kind provider serves the Responses API itself")
        if provider.api_key_env is not None and provider.api_key_env not in environ:
            problems.append(f"{where}.api_key_env: environment variable {provider.api_key_env} is not set")
        for position, model in enumerate(provider.models):
            if not model:
                problems.append(f"{where}.models[{position}]: must not be empty")
    if not config.providers:
        problems.append("providers: at least one [[providers]] entry is required")
    for alias, target in config.models.items():
        if not target.deployments:
            problems.append(f"models.{alias}.deployments: must name at least one deployment")
        for position, deployment in enumerate(target.deployments):
            if deployment.provider not in seen:
                problems.append(
                    f"models.{alias}.deployments[{position}].provider: no provider named {deployment.provider!r}"
                )
    for key in config.pricing:
        provider_name, slash, model = key.partition("/")
        if not slash or not model:
            problems.append(f'pricing."{key}": expected a key of the form "PROVIDER/MODEL"')
        elif provider_name not in seen:
            problems.append(f'pricing."{key}": no provider named {provider_name!r}')
    names: set[str] = set()
    routes = config.routing_index()
    for index, tenant in enumerate(config.tenants):
        where = f"tenants[{index}]"
        if not tenant.name:
            problems.append(f"{where}.name: must not be empty")
        if tenant.name in names:
            problems.append(f"{where}.name: duplicate tenant name {tenant.name!r}")
        names.add(tenant.name)
        if (tenant.api_key_sha256 is None) == (tenant.api_key_env is None):
            problems.append(f"{where}: set exactly one of api_key_sha256 and api_key_env")
        if tenant.api_key_sha256 is not None and not _SHA256.match(tenant.api_key_sha256):
            problems.append(f"{where}.api_key_sha256: expected 64 lowercase hex digits")
        if tenant.api_key_env is not None and not environ.get(tenant.api_key_env):
            problems.append(f"{where}.api_key_env: environment variable {tenant.api_key_env} is not set")
        problems.extend(f"{where}.{field}: {problem}" for field, problem in reference_problems(tenant.policy(), routes))
    if config.alerts.webhook_url is not None and (problem := _check_url(config.alerts.webhook_url)):
        problems.append(f"alerts.webhook_url: {problem}")
    if not config.admin.api_key_env:
        problems.append("admin.api_key_env: must name an environment variable")
    return problems

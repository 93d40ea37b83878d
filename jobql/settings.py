"""Every setting jobql reads, in one place: environment variables prefixed `JOBQL_`."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobql.callbacks import Endpoint, allowed_endpoints

MIN_SECRET_KEY_BYTES = 32


class MissingSecretKey(RuntimeError):
    """Raised when a process that checks tokens starts without `JOBQL_SECRET_KEY`, or with one
    too short to resist guessing."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JOBQL_", frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    storage: Literal["filesystem", "s3"] = Field(
        default="filesystem", description="Where uploads and result files are kept"
    )
    media_root: Path = Path("media")
    # JOBQL_STORAGE=s3: the bucket; credentials come from the standard AWS variables.
    s3_bucket: str = ""
    s3_endpoint_url: str = Field(default="", description="Empty for AWS itself")
    s3_region: str = "us-east-1"
    s3_prefix: str = Field(default="", description="Where jobql's keys begin in the bucket")
    media_public_url: str = Field(
        default="",
        description="With S3: public files' URLs begin here (a CDN, a public bucket); "
        "empty, presigned URLs valid until the job expires",
    )
    secret_key: SecretStr | None = None
    kinds: str = Field(
        default="",
        description="Modules of more kinds of job, comma-separated (mypackage.jobs.export)",
    )

    mail_server: str | None = None
    mail_port: int = 25
    mail_use_tls: bool = False
    mail_username: str | None = None
    mail_password: SecretStr | None = None
    mail_default_sender: str = "jobql <noreply@localhost>"
    mail_timeout: float = Field(default=10.0, gt=0, description="SMTP socket timeout, seconds")
    mail_keepalive: float = Field(
        default=10.0,
        ge=0,
        description="Seconds an idle SMTP connection is kept for the next email; 0 closes each",
    )
    mail_max_retries: int = Field(default=5, ge=0)
    mail_retry_backoff: float = Field(
        default=2.0, gt=0, description="Seconds before the first retry; doubles each time"
    )
    storage_max_retries: int = Field(
        default=5, ge=0, description="Retries of a job whose result file cannot be written"
    )
    storage_retry_backoff: float = Field(
        default=5.0, gt=0, description="Seconds before the first such retry; doubles each time"
    )

    site_name: str = "jobql"
    result_expires: int = Field(default=86_400, gt=0, description="Seconds a job is kept")
    queue_ttl: int = Field(
        default=3600,
        gt=0,
        description="Seconds a queued job may wait for a worker (a delayed one, from its start "
        "time) before it expires unrun",
    )
    redis_timeout: float = Field(
        default=1.0, gt=0, description="Connect and read timeout of the web process's Redis calls"
    )
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=64_000_000, gt=0)
    introspection: bool = False
    log_json: bool = Field(default=False, description="Log one JSON object a line")
    rate_limit_per_minute: int = Field(
        default=120, ge=0, description="Mutations per user per minute; 0 turns the limit off"
    )
    run_id: str | None = Field(
        default=None,
        description="Reported by /healthz, so that whoever started the server can tell it answered",
    )
    ws_init_timeout: float = Field(
        default=10.0, gt=0, description="Seconds a WebSocket may wait before connection_init"
    )
    request_timeout: float = Field(
        default=60.0, gt=0, description="Seconds a request's headers, then its body, may take"
    )
    min_upload_rate: int = Field(
        default=16 * 1024,
        ge=0,
        description="Bytes per second an upload must average once it is 5 s old; 0: no minimum",
    )
    max_uploads_per_user: int = Field(default=4, gt=0, description="Uploads in flight per user")
    max_uploads: int = Field(default=64, gt=0, description="Uploads in flight per web process")
    max_subscriptions_per_user: int = Field(
        default=200, gt=0, description="Open subscriptions per user in one web process"
    )
    max_connections_per_user: int = Field(
        default=32, gt=0, description="Open WebSockets per user in one web process"
    )
    max_connections: int = Field(
        default=10_000,
        gt=0,
        description="Requests and WebSockets a web process holds at once; over it: 503 or 1013",
    )
    max_decoded_image_bytes: int = Field(
        default=100 * 1024 * 1024,
        gt=0,
        description="Largest image once decoded: pixels x bytes per pixel of its mode",
    )
    allow_non_expiring_tokens: bool = Field(
        default=False, description="Accept tokens without an `exp` claim"
    )
    jwks_url: str | None = Field(
        default=None, description="JSON Web Key Set of an identity provider (RS256, ES256)"
    )
    jwt_issuer: str | None = Field(default=None, description="The `iss` every token must carry")
    jwt_audience: str | None = Field(default=None, description="The `aud` every token must name")

    callback_allowed_hosts: str = Field(
        default="",
        description="Hosts a job's callbackUrl may name, comma-separated (https unless "
        "written http://host); empty: no callbacks",
    )
    callback_secret: SecretStr | None = Field(
        default=None, description="Signs callback POSTs (HMAC-SHA256); needed with hosts"
    )
    callback_max_attempts: int = Field(default=6, gt=0, le=20, description="POSTs of a callback")
    callback_timeout: float = Field(
        default=10.0, gt=0, description="Seconds a callback POST may take for each step"
    )
    callback_retry_backoff: float = Field(
        default=30.0, gt=0, description="Seconds before a callback's second POST; doubles"
    )

    task_time_limit: int = Field(default=300, gt=0, description="Hard limit per task, seconds")
    visibility_timeout: int = Field(
        default=3600,
        gt=0,
        description="Seconds before an unacknowledged task is given to another worker",
    )
    max_attempts: int = Field(
        default=3, gt=0, description="Deliveries of one job before it is taken as poison"
    )
    recover_after: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a queued job may be missing from the broker before it is queued again",
    )
    data_loss_check: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between a web process's looks for Redis having lost its data",
    )
    sweep_interval: float = Field(default=600.0, gt=0, description="Seconds between sweeps")
    sweep_min_age: float = Field(
        default=600.0,
        gt=0,
        description="Age in seconds before a leftover file is swept; at least the task time limit",
    )

    @model_validator(mode="after")
    def _limits_agree(self) -> Settings:
        if self.visibility_timeout <= self.task_time_limit:
            raise ValueError(
                "JOBQL_VISIBILITY_TIMEOUT must be longer than JOBQL_TASK_TIME_LIMIT, "
                "or a task still running is handed to a second worker."
            )
        if self.sweep_min_age < self.task_time_limit:
            raise ValueError(
                "JOBQL_SWEEP_MIN_AGE must be at least JOBQL_TASK_TIME_LIMIT, or the sweep "
                "could remove a file a running task is still writing."
            )
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("JOBQL_STORAGE=s3 needs JOBQL_S3_BUCKET: the bucket media goes in.")
        if self.media_public_url and not self.media_public_url.startswith(("https://", "http://")):
            raise ValueError("JOBQL_MEDIA_PUBLIC_URL must be an http(s) URL.")
        if self.callback_endpoints:
            secret = self.callback_secret.get_secret_value() if self.callback_secret else ""
            if len(secret.encode()) < MIN_SECRET_KEY_BYTES:
                raise ValueError(
                    "JOBQL_CALLBACK_ALLOWED_HOSTS is set, so JOBQL_CALLBACK_SECRET must be too, "
                    f"at least {MIN_SECRET_KEY_BYTES} bytes long: it signs every callback. "
                    'Make one with: python -c "import secrets; print(secrets.token_urlsafe(32))".'
                )
            longest_wait = self.callback_retry_backoff * 2 ** (self.callback_max_attempts - 2)
            if longest_wait + self.callback_timeout * 3 >= self.visibility_timeout:
                raise ValueError(
                    "JOBQL_CALLBACK_RETRY_BACKOFF doubled JOBQL_CALLBACK_MAX_ATTEMPTS - 2 times "
                    f"({longest_wait:g} s) must stay well under JOBQL_VISIBILITY_TIMEOUT: a "
                    "worker holds a retry's message until it is due."
                )
        return self

    @cached_property
    def callback_endpoints(self) -> frozenset[Endpoint]:
        """What `callback_allowed_hosts` allows (a bad entry is a `ValueError`)."""
        return allowed_endpoints(self.callback_allowed_hosts)

    @property
    def max_delay_seconds(self) -> int:
        """The longest delay a job may ask for: it must start and end within the visibility."""
        return max(0, min(600, self.visibility_timeout - self.task_time_limit - 1))

    def require_secret_key(self) -> str:
        if self.secret_key is None or not self.secret_key.get_secret_value():
            raise MissingSecretKey(
                "JOBQL_SECRET_KEY is not set: tokens cannot be signed or checked. "
                "Set it to a long random string (for example: "
                'python -c "import secrets; print(secrets.token_urlsafe(32))").'
            )
        secret_key = self.secret_key.get_secret_value()
        if len(secret_key.encode()) < MIN_SECRET_KEY_BYTES:
            raise MissingSecretKey(
                f"JOBQL_SECRET_KEY is {len(secret_key.encode())} bytes long: at least "
                f"{MIN_SECRET_KEY_BYTES} are needed, or tokens can be forged by guessing it. "
                'Make one with: python -c "import secrets; print(secrets.token_urlsafe(32))".'
            )
        return secret_key

    @property
    def kind_modules(self) -> list[str]:
        return [name.strip() for name in self.kinds.split(",") if name.strip()]

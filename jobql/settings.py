"""Every setting jobql reads, in one place: environment variables prefixed `JOBQL_`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class MissingSecretKey(RuntimeError):
    """Raised when a process that checks tokens starts without `JOBQL_SECRET_KEY`."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JOBQL_", frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    media_root: Path = Path("media")
    secret_key: SecretStr | None = None

    mail_server: str | None = None
    mail_port: int = 25
    mail_use_tls: bool = False
    mail_username: str | None = None
    mail_password: SecretStr | None = None
    mail_default_sender: str = "jobql <noreply@localhost>"
    mail_timeout: float = Field(default=10.0, gt=0, description="SMTP socket timeout, seconds")
    mail_max_retries: int = Field(default=5, ge=0)
    mail_retry_backoff: float = Field(
        default=2.0, gt=0, description="Seconds before the first retry; doubles each time"
    )

    site_name: str = "jobql"
    result_expires: int = Field(default=86_400, gt=0, description="Seconds a job is kept")
    redis_timeout: float = Field(
        default=1.0, gt=0, description="Connect and read timeout of the web process's Redis calls"
    )
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=64_000_000, gt=0)
    introspection: bool = True
    task_time_limit: int = Field(default=300, gt=0, description="Hard limit per task, seconds")

    def require_secret_key(self) -> str:
        if self.secret_key is None or not self.secret_key.get_secret_value():
            raise MissingSecretKey(
                "JOBQL_SECRET_KEY is not set: tokens cannot be signed or checked. "
                "Set it to a long random string (for example: "
                'python -c "import secrets; print(secrets.token_urlsafe(32))").'
            )
        return self.secret_key.get_secret_value()

    @property
    def incoming_dir(self) -> Path:
        return self.media_root / "incoming"

    @property
    def avatars_dir(self) -> Path:
        return self.media_root / "avatars"

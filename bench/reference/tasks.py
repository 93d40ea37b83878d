"""The article's design, worker side: Celery tasks called with `.delay()`.

Same broker, backend and worker settings as jobql; the work is what the article did:
Pillow's `thumbnail` for avatars, Flask-Mail for the welcome email.
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from flask import Flask
from flask_mail import Mail, Message
from PIL import Image

REDIS_URL = os.environ.get("REFERENCE_REDIS_URL", "redis://127.0.0.1:6379/0")
MEDIA = Path(os.environ.get("REFERENCE_MEDIA", "/tmp/reference-media"))

app = Celery("reference", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    accept_content=["json"],
    task_serializer="json",
    result_serializer="json",
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    task_default_queue="reference",
)

mail_app = Flask("reference")
mail_app.config.update(
    MAIL_SERVER=os.environ.get("REFERENCE_MAIL_SERVER", "127.0.0.1"),
    MAIL_PORT=int(os.environ.get("REFERENCE_MAIL_PORT", "25")),
    MAIL_DEFAULT_SENDER="reference <noreply@localhost>",
)
mail = Mail(mail_app)


def thumbnail(source: Path, destination: Path, size: int = 256) -> tuple[int, int]:
    """The article's avatar code."""
    with Image.open(source) as image:
        image.thumbnail((size, size))
        image.convert("RGB").save(destination, "JPEG", quality=85)
        return image.size


@app.task(bind=True)
def process_avatar(self, path: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    self.update_state(state="PROGRESS", meta={"progress": 10})
    destination = MEDIA / "avatars" / f"{self.request.id}.jpg"
    destination.parent.mkdir(parents=True, exist_ok=True)
    width, height = thumbnail(Path(path), destination)
    Path(path).unlink(missing_ok=True)
    return {"url": f"/media/avatars/{destination.name}", "width": width, "height": height}


@app.task
def send_welcome_email(email: str, username: str) -> dict[str, str]:
    with mail_app.app_context():
        message = Message(
            subject="Welcome!",
            recipients=[email],
            body=f"Hello {username}, welcome!",
            html=f"<p>Hello {username}, welcome!</p>",
        )
        mail.send(message)
    return {"recipient": email}

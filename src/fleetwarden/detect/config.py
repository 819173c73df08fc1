"""Settings of the detection subsystem: ``[detect]`` in fleetwarden.toml.

Example::

    [detect]
    rules_file = "detect-rules.toml"       # relative to the data directory
    window_seconds = 300
    custom_metrics = ["battery_mv"]

    [detect.groups.meters]                 # per-group learning and sensitivity
    learning_days = 7
    sensitivity = 1.2

    [[detect.sinks]]
    type = "webhook"
    url = "https://soc.example/hook"
    secret_file = "webhook.secret"         # 0600, relative to the data directory

Secrets (webhook HMAC key, SMTP password) are read from files, never from this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetwarden.detect.baseline import NOVELTY, BaselineConfig


class GroupTuning(BaseModel):
    model_config = ConfigDict(extra="forbid")
    learning_days: float = Field(default=7, ge=0, le=90)
    sensitivity: float = Field(default=1.0, gt=0.1, le=10)
    #: novelty kinds judged for this group (default: all); e.g. drop "topic" for fleets
    #: whose topics are dynamic
    novelty: list[str] | None = None
    source_prefix_v4: int = Field(default=16, ge=8, le=32)

    @field_validator("novelty")
    @classmethod
    def _kinds(cls, v: list[str] | None) -> list[str] | None:
        known = {k for k, _ in NOVELTY}
        if v is not None and not set(v) <= known:
            raise ValueError(f"novelty kinds must be among {', '.join(sorted(known))}")
        return v

    def baseline(self, window_s: int) -> BaselineConfig:
        cfg = BaselineConfig(
            learning_windows=int(self.learning_days * 86400 / window_s),
            sensitivity=self.sensitivity,
            source_prefix_v4=self.source_prefix_v4,
        )
        if self.novelty is not None:
            cfg.novelty = tuple(self.novelty)
        return cfg


class WebhookSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["webhook"]
    url: str
    secret_file: Path


class ChatSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["chat"]
    url: str


class SmtpSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["email"]
    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    sender: str
    recipients: list[str] = Field(min_length=1)
    starttls: bool = False
    username: str | None = None
    password_file: Path | None = None


class SyslogSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["syslog"]
    host: str = "127.0.0.1"
    port: int = Field(default=514, ge=1, le=65535)
    protocol: Literal["udp", "tcp"] = "udp"


SinkConfig = Annotated[
    WebhookSinkConfig | ChatSinkConfig | SmtpSinkConfig | SyslogSinkConfig,
    Field(discriminator="type"),
]


class DetectSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    window_seconds: int = Field(default=300, ge=10, le=3600)
    rules_file: Path | None = None
    custom_metrics: list[str] = Field(default_factory=list, max_length=32)
    groups: dict[str, GroupTuning] = Field(default_factory=dict)
    default: GroupTuning = Field(default_factory=GroupTuning)
    multivariate: bool = True
    max_per_window: int = Field(default=2, ge=1, le=100)
    quarantine_group: str = "quarantine"
    sinks: list[SinkConfig] = Field(default_factory=list)
    sink_queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    sink_attempts: int = Field(default=5, ge=1, le=20)

    def baseline_configs(self) -> dict[str, BaselineConfig]:
        out = {"*": self.default.baseline(self.window_seconds)}
        for name, tuning in self.groups.items():
            out[name] = tuning.baseline(self.window_seconds)
        return out

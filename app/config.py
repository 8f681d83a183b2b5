"""The one settings class: every knob is a FITSERVE_* environment variable."""

import os
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Limits(BaseModel):
    """Bounds on what one request may ask for; each breach is a 422 naming the field.

    The dataset bounds (`max_rows`, `max_features`, `max_cells`, `max_classes`) hold for runs
    and for uploads alike, so a dataset that is accepted can be trained on. An upload past
    `max_rows`, `max_features`, `max_cells`, `max_dataset_columns` or `max_decoded_bytes` is a
    413, found from Parquet metadata before decoding, or while CSV streams in.
    """

    max_epochs: int = 10_000
    max_batch_size: int = 65_536
    # Rows of a run's dataset (inline, generated or uploaded).
    max_rows: int = 20_000_000
    # Rows x features of a run's dataset: 10M x 50 fits, as float32 2.4 GB at most.
    max_cells: int = 600_000_000
    max_features: int = 10_000
    max_classes: int = 1_000
    max_hidden_width: int = 4_096
    max_hidden_layers: int = 16
    max_parameters: int = 20_000_000
    max_predict_rows: int = 100_000
    # Columns of an uploaded file, used or not: room for max_features and a target, and more.
    max_dataset_columns: int = 20_000
    # Bytes an upload's used columns may decode to (float32 features and the target as read),
    # and the most any one Parquet column chunk may decompress to.
    max_decoded_bytes: int = 3 * 1024**3


class RunFaults(BaseModel):
    """Faults a worker injects into one run, for fitserve's own reliability tests."""

    # A misspelt fault must not quietly inject nothing.
    model_config = ConfigDict(extra="forbid")

    kill_at_epoch: int | None = Field(None, ge=1, description="SIGKILL halfway through it.")
    kill_before_commit_at_epoch: int | None = Field(
        None,
        ge=1,
        description="SIGKILL once this epoch's checkpoint object is published, before the "
        "transaction that names it commits.",
    )
    kill_on_attempts: int = Field(1, ge=0, description="Kill only on the first N attempts.")
    stall_heartbeat_on_attempts: int = Field(
        0, ge=0, description="Stop renewing the lease on the first N attempts."
    )
    epoch_sleep_seconds: float = Field(0.0, ge=0, le=60, description="Linger after each epoch.")
    out_of_memory_at_epoch: int | None = Field(
        None, ge=1, description="Raise torch's out-of-memory error in this epoch."
    )
    out_of_memory_on_attempts: int = Field(1, ge=0, description="Only on the first N attempts.")
    pause_after_epoch: int | None = Field(
        None,
        ge=1,
        description="The first time an attempt has written this epoch, create "
        "`<pause_dir>/paused` and wait until `<pause_dir>/resume` exists or the attempt is "
        "interrupted: a test acts on a worker stopped at a known point instead of racing it.",
    )
    pause_in_epoch: int | None = Field(
        None,
        ge=1,
        description="Pause as `pause_after_epoch` does, but halfway through this epoch, "
        "before its middle batch: a stop then ends the attempt with a mid-epoch checkpoint.",
    )
    pause_dir: str | None = Field(None, description="Where the pause files are.")
    pause_ignores_stop: bool = Field(
        False, description="Stay paused through a stop: a worker that does not stop in time."
    )


class Settings(BaseSettings):
    """fitserve's configuration, read once at start-up and passed to whoever needs it."""

    model_config = SettingsConfigDict(
        env_prefix="FITSERVE_", env_nested_delimiter="__", extra="ignore"
    )

    database_url: str = Field(
        default="sqlite:///./fitserve.db",
        validation_alias=AliasChoices("FITSERVE_DATABASE_URL", "DATABASE_URL"),
    )
    host: str = "127.0.0.1"
    port: int = 8000

    auth: Literal["required", "off"] | None = Field(
        default=None,
        description="Unset: required once any API key exists or when the API listens beyond "
        "loopback; `off` lets every request act as the admin of project `default`.",
    )
    key_poll_seconds: float = Field(
        default=0.25,
        gt=0,
        le=1.0,
        description="How often each API process reloads changed keys: the bound on how long "
        "a revoked key keeps working.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins browsers may call the API from (comma-separated); none by default.",
    )

    devices: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Device slots, one worker each (comma-separated); empty: every GPU, else cpu.",
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="Torch threads per worker. Unset: this machine's cores divided among its "
        "local workers (at least one each).",
    )

    executor: Literal["local", "ray"] = Field(
        default="local",
        description="What trains the runs workers claim: `local` worker processes, one per "
        "device slot, or `ray`: each run a Ray task (Ray Train for data-parallel runs) on "
        "whichever node of the Ray cluster has its resources.",
    )
    ray_address: str | None = Field(
        default=None,
        description="The Ray cluster to join (`auto`, `host:6379`). Unset: start a Ray "
        "instance on this machine.",
    )
    ray_num_cpus: int | None = Field(
        default=None,
        ge=1,
        description="CPUs of the Ray instance fitserve starts itself (unset: all cores).",
    )
    replica_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long a data-parallel run's processes wait for each other to start "
        "or to reach the next batch before the attempt is given up.",
    )

    lease_seconds: float = Field(default=30.0, gt=0)
    sqlite_busy_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How long a SQLite write waits for the lock; at most half the lease.",
    )
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    poll_seconds: float = Field(default=2.0, gt=0)
    shutdown_grace_seconds: float = Field(default=20.0, gt=0)
    default_max_attempts: int = Field(default=3, ge=1)
    test_faults: dict[int, RunFaults] = Field(
        default_factory=dict,
        description="Faults workers inject, by run id (FITSERVE_TEST_FAULTS as JSON): a hook "
        "for fitserve's own tests, never part of the API; leave unset in production.",
    )

    artifacts: str | None = Field(
        default=None,
        description="Where dataset tables, checkpoints and weights are kept: a directory or "
        "an fsspec URL such as `s3://bucket/prefix` (credentials and endpoint the usual AWS "
        "way). Unset: the directory `fitserve-artifacts` beside the SQLite file, or in the "
        "working directory for other databases.",
    )
    artifact_cache_dir: str | None = Field(
        default=None,
        description="This node's cache of remote artifacts, keyed by sha256. Unset: "
        "`$XDG_CACHE_HOME/fitserve` (`~/.cache/fitserve`).",
    )
    artifact_cache_bytes: int = Field(
        default=20 * 1024**3,
        ge=0,
        description="The most the cache of remote artifacts keeps; least recently used go first.",
    )

    max_body_bytes: int = 64 * 1024 * 1024
    max_dataset_bytes: int = Field(
        default=4 * 1024**3,
        description="Largest dataset upload to POST /datasets; other bodies keep max_body_bytes.",
    )
    model_cache_entries: int = 256
    model_cache_bytes: int = 1024 * 1024 * 1024
    predict_device: str = "cpu"
    predict_inline_max_bytes: int = Field(
        default=32 * 1024,
        ge=0,
        description="Predict bodies larger than this (about 150 rows of 20 features) are "
        "parsed and run in the thread pool so they do not hold up small requests.",
    )
    registry_poll_seconds: float = Field(
        default=0.1,
        gt=0,
        description="How often each API process reads the registry generation.",
    )
    registry_max_staleness_seconds: float = Field(
        default=1.0,
        gt=0,
        description="A name resolution not confirmed current for this long is read again "
        "from the database: the bound on how stale `name@alias` can be in any process.",
    )

    events_poll_seconds: float = Field(
        default=0.1,
        gt=0,
        le=0.2,
        description="How often each API process looks for new run events where the database "
        "has no NOTIFY (SQLite): the bound on an event stream's delay.",
    )
    events_keepalive_seconds: float = Field(
        default=15.0,
        gt=0,
        description="Seconds between keep-alive comments on an idle event stream.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`json`: one JSON object a line, with run id, attempt, worker and request id.",
    )
    log_level: str = "INFO"
    metrics: bool = Field(
        default=True,
        description="Serve /metrics and time every prediction; false: neither (a baseline for "
        "the benchmark).",
    )

    limits: Limits = Field(default_factory=Limits)

    @model_validator(mode="after")
    def _busy_timeout_below_lease(self) -> Self:
        # A worker's write that waited out the busy timeout is retried while its lease
        # holds; one that could wait as long as the lease would cost a healthy attempt.
        if self.sqlite_busy_timeout_seconds * 2 > self.lease_seconds:
            raise ValueError(
                f"sqlite_busy_timeout_seconds ({self.sqlite_busy_timeout_seconds:g}) must be "
                f"at most half of lease_seconds ({self.lease_seconds:g})"
            )
        return self

    @field_validator("devices", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    def anchored(self) -> Self:
        """These settings with the SQLite file and the artifact store as absolute paths, for
        processes that run in another working directory (Ray's)."""
        database_url = self.database_url
        if self.is_sqlite and "///" in database_url:
            prefix, database_file = database_url.split("///", 1)
            path, _, query = database_file.partition("?")
            if path not in ("", ":memory:"):
                database_url = f"{prefix}///{Path(path).resolve()}" + (f"?{query}" if query else "")
        return self.model_copy(
            update={"database_url": database_url, "artifacts": self.artifacts_url}
        )

    @property
    def artifacts_url(self) -> str:
        """The artifact store's URL or directory, with the default resolved."""
        if self.artifacts:
            return self.artifacts
        if self.is_sqlite and "///" in self.database_url:
            database_file = self.database_url.split("///", 1)[1].split("?", 1)[0]
            if database_file not in ("", ":memory:"):
                return str(Path(database_file).resolve().parent / "fitserve-artifacts")
        return str(Path("fitserve-artifacts").resolve())

    @property
    def artifact_cache_path(self) -> Path:
        """This node's cache directory for remote artifacts."""
        if self.artifact_cache_dir:
            return Path(self.artifact_cache_dir)
        home_cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(home_cache) / "fitserve"

    def threads_per_worker(self, local_workers: int) -> int:
        """Torch threads for each of `local_workers` workers sharing this machine."""
        if self.torch_threads is not None:
            return self.torch_threads
        return max(1, (os.cpu_count() or 1) // max(1, local_workers))

    @property
    def is_sqlite(self) -> bool:
        """Whether the configured database is SQLite."""
        return self.database_url.startswith("sqlite")

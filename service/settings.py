"""Settings from environment variables (pydantic-settings), read at entry points only.

Libraries below the entry points take these values as arguments; nothing else reads the
environment. ``get_settings()`` is cached; tests build ``Settings(...)`` directly.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.storage import check_uri

DATABASE_FILE = "normsearch.db"


def sqlite_url(runs_dir: Path) -> str:
    """The URL of the SQLite database in ``runs_dir`` (relative paths stay relative)."""
    return f"sqlite:///{Path(runs_dir).expanduser() / DATABASE_FILE}"


class Settings(BaseSettings):
    # hide_input_in_errors: a refused value (a URL with a password in it) is never echoed.
    model_config = SettingsConfigDict(
        env_prefix="NORMSEARCH_", extra="ignore", hide_input_in_errors=True
    )

    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path("data")],
        description="Directories dataset paths must lie in (NORMSEARCH_DATA_ROOTS, "
        "separated by ':' or ',').",
    )
    runs_dir: Path = Field(
        default=Path("runs"), description="Where searches keep Ray Tune state and checkpoints."
    )
    storage_uri: str | None = Field(
        default=None,
        description="Where Ray Tune keeps its experiments (trial checkpoints, experiment state, "
        "result logs) (NORMSEARCH_STORAGE_URI): a filesystem path every Ray node mounts at the "
        "same place, file://PATH, or s3://BUCKET/PREFIX (an S3-compatible server: "
        "?endpoint_override=HOST:PORT&scheme=http; credentials from the AWS_* variables, never "
        "in the URI); unset: each run's work directory in the runs directory. The artifacts the "
        "API serves stay in the runs directory either way.",
    )
    ray_address: str | None = Field(
        default=None,
        validation_alias="RAY_ADDRESS",
        description="Ray cluster to join (RAY_ADDRESS); unset: start a local Ray.",
    )
    ray_num_cpus: int | None = Field(
        default=None, ge=1, description="CPUs of a local Ray (default: all)."
    )
    check_cluster_fit: bool = Field(
        default=True,
        description="Refuse a spec whose trial fits on no alive node of the Ray cluster "
        "(resources.cpus_per_trial/gpus_per_trial): the worker fails it before the experiment "
        "starts and the API answers 422 while it knows the capacity; turn off for a cluster "
        "whose autoscaler adds nodes on demand (NORMSEARCH_CHECK_CLUSTER_FIT).",
    )
    cluster_capacity_max_age_s: float = Field(
        default=600.0,
        gt=0,
        description="The node shapes a worker publishes in the runs directory (on joining Ray, "
        "then every minute) count for the API's fit check while younger than this; older or "
        "missing: unknown, the API accepts and the worker decides "
        "(NORMSEARCH_CLUSTER_CAPACITY_MAX_AGE_S).",
    )
    database_url: str = Field(
        # The runs directory's file, as `normsearch up` uses: every command that reads these
        # settings (serve, worker, token, db) finds the same database.
        default_factory=lambda data: sqlite_url(data.get("runs_dir", Path("runs"))),
        description="SQLAlchemy URL of the service database (NORMSEARCH_DATABASE_URL), e.g. "
        "postgresql+psycopg://user@host/db; default: normsearch.db, a SQLite file in the runs "
        "directory (NORMSEARCH_RUNS_DIR).",
    )

    broker_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Celery broker URL (NORMSEARCH_BROKER_URL).",
    )
    result_backend: str | None = Field(
        default=None,
        description="Celery result backend (NORMSEARCH_RESULT_BACKEND); unset: no results are "
        "stored (job status lives in the database).",
    )
    task_time_limit_s: int = Field(
        default=24 * 3600,
        ge=60,
        description="Hard time limit of one search task in seconds (NORMSEARCH_TASK_TIME_LIMIT_S).",
    )

    broker_visibility_timeout_s: int | None = Field(
        default=None,
        ge=1,
        description="Seconds before Redis redelivers an unacknowledged task "
        "(NORMSEARCH_BROKER_VISIBILITY_TIMEOUT_S); default: the task time limit plus an hour.",
    )

    heartbeat_interval_s: float = Field(
        default=15.0,
        gt=0,
        description="How often a running job's worker records that it is alive "
        "(NORMSEARCH_HEARTBEAT_INTERVAL_S).",
    )
    heartbeat_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="A running job whose last heartbeat is older than this belongs to a lost "
        "worker: it is requeued (or failed after max_attempts) (NORMSEARCH_HEARTBEAT_TIMEOUT_S).",
    )
    reaper_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="How often the API process looks for jobs of lost workers "
        "(NORMSEARCH_REAPER_INTERVAL_S).",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Runs a job may start before a lost worker fails it instead of requeueing "
        "it (NORMSEARCH_MAX_ATTEMPTS).",
    )

    api_host: str = Field(
        default="127.0.0.1", description="API bind address (NORMSEARCH_API_HOST)."
    )
    api_port: int = Field(
        default=8000, ge=1, le=65535, description="API port (NORMSEARCH_API_PORT)."
    )
    public_url: str | None = Field(
        default=None,
        description="The address users reach the API and UI at (NORMSEARCH_PUBLIC_URL), e.g. "
        "https://normsearch.example.org or https://example.org/normsearch; when set, every "
        "absolute URL the API answers (artifact urls, Location) starts with it and the request's "
        "Host header is never echoed; unset: URLs follow the request "
        "(default address http://API_HOST:API_PORT).",
    )
    stream_auth_interval_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="How often an open event stream checks its token again: a stream whose "
        "token was revoked (or whose user was deleted) since it opened ends within this many "
        "seconds (NORMSEARCH_STREAM_AUTH_INTERVAL_S).",
    )
    max_body_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        description="Largest request body the API accepts (NORMSEARCH_MAX_BODY_BYTES).",
    )

    # Bounds on what one job spec may ask for (service.limits: the API refuses a spec over any
    # of them with a 422 naming the limit and its variable; the worker checks the model's size).
    max_json_depth: int = Field(
        default=32,
        ge=8,
        le=256,
        description="Deepest nesting of objects and arrays in a JSON request body "
        "(NORMSEARCH_MAX_JSON_DEPTH).",
    )
    max_seeds: int = Field(
        default=16, ge=1, le=64, description="Seeds of a search (NORMSEARCH_MAX_SEEDS)."
    )
    max_batch_sizes: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Batch sizes of a search (NORMSEARCH_MAX_BATCH_SIZES).",
    )
    max_lrs: int = Field(
        default=8, ge=1, le=64, description="Learning rates of a search (NORMSEARCH_MAX_LRS)."
    )
    max_trials: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Trials of a job, the search grid and the verification together "
        "(NORMSEARCH_MAX_TRIALS).",
    )
    max_epochs: int = Field(
        default=1000,
        ge=1,
        le=10_000,
        description="Epochs of one trial, training.epochs and verify.epochs "
        "(NORMSEARCH_MAX_EPOCHS).",
    )
    max_trial_epochs: int = Field(
        default=20_000,
        ge=1,
        le=100_000_000,
        description="Epochs of a whole job, summed over its trials (search and verification) "
        "(NORMSEARCH_MAX_TRIAL_EPOCHS).",
    )
    max_batch_size: int = Field(
        default=4096,
        ge=1,
        le=65_536,
        description="Batch size of a trial (NORMSEARCH_MAX_BATCH_SIZE).",
    )
    max_num_samples: int = Field(
        default=200_000,
        ge=20,
        le=10_000_000,
        description="Generated samples of a dataset, dataset.num_samples "
        "(NORMSEARCH_MAX_NUM_SAMPLES).",
    )
    max_num_classes: int = Field(
        default=1000,
        ge=2,
        le=100_000,
        description="Classes, dataset.num_classes and model.num_classes "
        "(NORMSEARCH_MAX_NUM_CLASSES).",
    )
    max_in_channels: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Input channels, model.in_channels (NORMSEARCH_MAX_IN_CHANNELS).",
    )
    max_image_size: int = Field(
        default=512,
        ge=4,
        le=1024,
        description="Side of the resized images, dataset.image_size (NORMSEARCH_MAX_IMAGE_SIZE).",
    )
    max_model_params: int = Field(
        default=100_000_000,
        ge=1000,
        description="Parameters of the model a job trains, counted by the worker before any "
        "training (NORMSEARCH_MAX_MODEL_PARAMS).",
    )
    max_activation_mib: int = Field(
        default=16_384,
        ge=1,
        description="Estimated activation memory of one training step at the largest batch "
        "size, in MiB, checked by the worker before any training "
        "(NORMSEARCH_MAX_ACTIVATION_MIB).",
    )

    # Quotas per user (service.quotas: what one user may have in flight at once, checked on
    # submit and retry in the transaction that queues the job; admins are exempt).
    max_jobs_per_user: int = Field(
        default=10,
        ge=1,
        le=100_000,
        description="Queued and running jobs one user may have at once "
        "(NORMSEARCH_MAX_JOBS_PER_USER).",
    )
    max_trial_epochs_per_user: int = Field(
        default=100_000,
        ge=1,
        le=10_000_000_000,
        description="Trial-epochs one user may have in flight: summed over their queued and "
        "running jobs, each job's trials x epochs (NORMSEARCH_MAX_TRIAL_EPOCHS_PER_USER).",
    )
    quota_retry_after_s: int = Field(
        default=60,
        ge=1,
        le=86_400,
        description="Seconds a submission over a user's quota is told to wait before trying "
        "again (the Retry-After of the 429) (NORMSEARCH_QUOTA_RETRY_AFTER_S).",
    )

    @field_validator("public_url", mode="before")
    @classmethod
    def _check_public_url(cls, value):
        """An http(s) URL with a host and no query or fragment, kept without its trailing
        slash (API paths are appended to it); an empty value is unset."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            raise ValueError("must be a URL string")
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL with a host, not {value!r}")
        if parts.query or parts.fragment:
            raise ValueError("must have no query or fragment")
        return value.rstrip("/")

    @field_validator("storage_uri", mode="before")
    @classmethod
    def _check_storage_uri(cls, value):
        """Its form only (``service.storage.check_uri``); whether it is reachable and writable
        is checked where it is used (the worker, ``normsearch run``)."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            raise ValueError("must be a path or URI string")
        return check_uri(value)

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value):
        if isinstance(value, str):
            parts = [p for chunk in value.split(",") for p in chunk.split(os.pathsep)]
            return [Path(p.strip()) for p in parts if p.strip()]
        return value

    def resolved_data_roots(self) -> list[Path]:
        return [root.expanduser().resolve() for root in self.data_roots]

    def visibility_timeout_s(self) -> int:
        """Redis redelivers an unacknowledged task after this many seconds."""
        if self.broker_visibility_timeout_s is not None:
            return self.broker_visibility_timeout_s
        return self.task_time_limit_s + 3600

    def base_url(self) -> str:
        return self.public_url or f"http://{self.api_host}:{self.api_port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

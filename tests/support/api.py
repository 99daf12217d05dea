"""Helpers for API tests: users with tokens, auth headers, a tiny job spec."""

from __future__ import annotations

import uuid
from pathlib import Path

from service import auth
from service.db import make_engine, make_session_factory
from service.settings import Settings


def api_test_settings(base: Path, database_url: str, broker_url: str, **overrides) -> Settings:
    """The settings of a test app: its database and broker, runs and data roots under ``base``
    (created), plus ``overrides``."""
    (base / "data").mkdir(parents=True, exist_ok=True)
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        runs_dir=base / "runs",
        data_roots=[base / "data"],
        **overrides,
    )


def create_user_token(database_url: str, name: str | None = None) -> str:
    """A new user (or an existing one by ``name``) with a fresh token; the raw token."""
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session, session.begin():
            user = auth.get_or_create_user(session, name=name or f"user-{uuid.uuid4().hex[:8]}")
            raw, _ = auth.create_token(session, user=user, name="test")
        return raw
    finally:
        engine.dispose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def tiny_spec(epochs: int = 2, **overrides) -> dict:
    """A digits search small enough for a test (one seed, resnet20, batch 128)."""
    spec = {
        "model": {"arch": "resnet20"},
        "dataset": {"kind": "digits"},
        "training": {"epochs": epochs, "batch_size": 128, "lr": 0.1},
        "search": {
            "sparsity": {"end": 0.5},
            "stop_when_stable": {"enabled": False},
            "trials": {"seeds": [0]},
        },
        "verify": {"enabled": True, "epochs": 1, "baselines": ["bn"]},
    }
    spec.update(overrides)
    return spec


def snapshot_row(trial_id: int, step: int, layer_index: int, **overrides) -> dict:
    """One ``RatioSnapshot`` row as the recorder writes it (fixed ratios; ``overrides`` for any
    column, e.g. ``layer`` or ``mean_fixed``)."""
    row = {
        "trial_id": trial_id,
        "layer_index": layer_index,
        "layer": f"layer{layer_index}.bn",
        "epoch": step,
        "step": step,
        "mean_in": 0.25,
        "mean_ln": 0.25,
        "mean_bn": 0.5,
        "mean_gn": None,
        "var_in": 0.5,
        "var_ln": 0.25,
        "var_bn": 0.25,
        "var_gn": None,
        **{name: None for name in ("mean_rms", "var_rms", "out_norm", "out_dyt", "out_none")},
        "mean_fixed": False,
        "var_fixed": True,
    }
    row.update(overrides)
    return row

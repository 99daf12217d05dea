"""Finalized checkpoints without pickle: safetensors weights plus JSON plan and model spec.

A checkpoint is a directory (or, for a path ending in ``.zip``, a zip archive) with three members:

* ``model.safetensors``: the finalized model's state dict;
* ``plan.json``: the ``NormalizerPlan`` that turns the zoo model into the finalized one;
* ``model.json``: ``{"format": "normsearch.model", "version": 1, "spec": {"arch", "num_classes",
  "in_channels", "kwargs"}, "batchnorm_folded": false}``, the arguments of
  ``sn_core.zoo.build_model``; ``batchnorm_folded`` (optional, default false) says that the saved
  model went through ``sn_core.fold_batchnorm``.

Loading rebuilds the zoo model from the spec, applies the plan, folds its BatchNorms the same way
when ``batchnorm_folded`` is set (the folded pairs depend only on the module graph, so the
skeleton's state dict has the saved keys) and loads the weights strictly; nothing in a checkpoint
is ever executed. A reader older than ``batchnorm_folded`` fails on a folded checkpoint with
"does not match the model", never with wrong weights.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .finalize import apply_plan, fold_batchnorm
from .plan import NormalizerPlan

__all__ = ["MODEL_FORMAT", "load_finalized", "save_finalized"]

MODEL_FORMAT = "normsearch.model"
MODEL_VERSION = 1
WEIGHTS_MEMBER = "model.safetensors"
PLAN_MEMBER = "plan.json"
MODEL_MEMBER = "model.json"
MEMBERS = (WEIGHTS_MEMBER, PLAN_MEMBER, MODEL_MEMBER)
_SPEC_FIELDS = ("arch", "num_classes", "in_channels", "kwargs")


def _check_spec(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise ValueError(f"model spec must be a mapping, got {type(spec).__name__}")
    missing = [key for key in _SPEC_FIELDS if key not in spec]
    if missing:
        raise ValueError(f"model spec is missing field(s) {missing}")
    unknown = sorted(set(spec) - set(_SPEC_FIELDS))
    if unknown:
        raise ValueError(f"model spec has unknown field(s) {unknown}")
    if not isinstance(spec["arch"], str) or not spec["arch"]:
        raise ValueError(f"model spec 'arch' must be a non-empty string, got {spec['arch']!r}")
    for key in ("num_classes", "in_channels"):
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"model spec {key!r} must be a positive integer, got {value!r}")
    if not isinstance(spec["kwargs"], Mapping):
        raise ValueError(f"model spec 'kwargs' must be a mapping, got {spec['kwargs']!r}")
    return {key: spec[key] for key in _SPEC_FIELDS}


def _state_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The state dict as contiguous CPU tensors, no two sharing memory (safetensors refuses)."""
    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    return tensors


def save_finalized(
    model: nn.Module,
    plan: NormalizerPlan,
    model_spec: Mapping[str, Any],
    path: str | Path,
    *,
    batchnorm_folded: bool = False,
) -> Path:
    """Write ``model`` (finalized with ``plan`` from the zoo model ``model_spec``) to ``path``.

    ``path`` ending in ``.zip``: a zip archive; otherwise a directory (created if needed). The
    spec must be JSON-serializable. ``batchnorm_folded``: ``model`` is ``fold_batchnorm`` of the
    finalized model (recorded in ``model.json``, so that loading folds its skeleton too).
    Returns the path written.
    """
    from safetensors.torch import save as save_bytes

    spec = _check_spec(model_spec)
    try:
        model_json = json.dumps(
            {
                "format": MODEL_FORMAT,
                "version": MODEL_VERSION,
                "spec": spec,
                "batchnorm_folded": bool(batchnorm_folded),
            },
            indent=2,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model spec is not JSON-serializable: {exc}") from exc
    members = {
        WEIGHTS_MEMBER: save_bytes(_state_tensors(model), metadata={"format": "pt"}),
        PLAN_MEMBER: (plan.to_json() + "\n").encode(),
        MODEL_MEMBER: (model_json + "\n").encode(),
    }
    path = Path(path)
    if path.suffix.lower() == ".zip":
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
    else:
        path.mkdir(parents=True, exist_ok=True)
        for name, data in members.items():
            (path / name).write_bytes(data)
    return path


def _inside(path: Path, roots: Iterable[str | Path]) -> bool:
    return any(path.is_relative_to(Path(root).resolve()) for root in roots)


def _read_members(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        missing = [name for name in MEMBERS if not (path / name).is_file()]
        if missing:
            raise ValueError(f"checkpoint {str(path)!r} is missing member(s) {missing}")
        return {name: (path / name).read_bytes() for name in MEMBERS}
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [name for name in MEMBERS if name not in names]
            if missing:
                raise ValueError(f"checkpoint {str(path)!r} is missing member(s) {missing}")
            return {name: archive.read(name) for name in MEMBERS}
    except zipfile.BadZipFile as exc:
        raise ValueError(
            f"checkpoint {str(path)!r} is neither a directory nor a valid zip archive: {exc}"
        ) from exc


def _read_model_doc(data: bytes) -> tuple[dict[str, Any], bool]:
    """(model spec, batchnorm_folded) of a ``model.json``."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{MODEL_MEMBER} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
        raise ValueError(f"{MODEL_MEMBER} is not a {MODEL_FORMAT!r} document")
    if doc.get("version") != MODEL_VERSION:
        raise ValueError(
            f"{MODEL_MEMBER}: unsupported version {doc.get('version')!r}; "
            f"this library reads version {MODEL_VERSION}"
        )
    if "spec" not in doc:
        raise ValueError(f"{MODEL_MEMBER} is missing field 'spec'")
    folded = doc.get("batchnorm_folded", False)
    if not isinstance(folded, bool):
        raise ValueError(
            f"{MODEL_MEMBER}: 'batchnorm_folded' must be true or false, got {folded!r}"
        )
    try:
        return _check_spec(doc["spec"]), folded
    except ValueError as exc:
        raise ValueError(f"{MODEL_MEMBER}: {exc}") from exc


def load_finalized(
    path: str | Path, *, roots: Iterable[str | Path] | None = None
) -> tuple[nn.Module, NormalizerPlan, dict[str, Any]]:
    """Load a checkpoint written by ``save_finalized``: (model in eval mode, plan, model spec).

    With ``roots``, the resolved ``path`` (symlinks followed) must lie inside one of those
    directories, else ValueError. Floating-point weights saved in one dtype (e.g. float64) are
    loaded into a model of that dtype.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    from .zoo import build_model

    resolved = Path(path).resolve()
    if roots is not None:
        roots = list(roots)
        if not _inside(resolved, roots):
            raise ValueError(f"checkpoint path {str(path)!r} is outside the allowed roots")
    if not resolved.exists():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    members = _read_members(resolved)
    spec, folded = _read_model_doc(members[MODEL_MEMBER])
    try:
        plan = NormalizerPlan.from_json(members[PLAN_MEMBER])
    except ValueError as exc:
        raise ValueError(f"{PLAN_MEMBER}: {exc}") from exc
    try:
        state = load_bytes(members[WEIGHTS_MEMBER])
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{WEIGHTS_MEMBER} is not a valid safetensors file: {exc}") from exc

    model = build_model(
        spec["arch"],
        num_classes=spec["num_classes"],
        in_channels=spec["in_channels"],
        **spec["kwargs"],
    )
    model = apply_plan(model, plan)
    if folded:  # the same pairs fold in the fresh skeleton (eval mode, running statistics)
        model = fold_batchnorm(model.eval())
    float_dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(float_dtypes) == 1:
        model = model.to(float_dtypes.pop())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"{WEIGHTS_MEMBER} does not match the model built from {MODEL_MEMBER} and "
            f"{PLAN_MEMBER}: {exc}"
        ) from exc
    return model.eval(), plan, spec

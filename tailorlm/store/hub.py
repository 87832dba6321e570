"""Download a model folder from the Hugging Face Hub, failing fast and in one line when offline."""

from __future__ import annotations

import json
from pathlib import Path

from tailorlm.errors import InvalidRequestError, ModelNotFoundError, OfflineError, UnsupportedModelError
from tailorlm.store.architectures import architecture
from tailorlm.store.hf_folder import MODEL_FILE_PATTERNS

ETAG_TIMEOUT_S = 5.0


def _root_cause(exc: BaseException) -> str:
    """The innermost cause of a chained exception, as "Type: first line"."""
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def download(repo_id: str, dest: Path) -> None:
    """snapshot_download the files the store keeps (config, tokenizer, safetensors, card) into `dest`: config.json
    first, so an architecture tailorlm does not run is refused before gigabytes of weights are fetched."""
    _fetch(repo_id, dest, ["config.json"])
    _check_architecture(repo_id, dest / "config.json")
    _fetch(repo_id, dest, list(MODEL_FILE_PATTERNS))


def _check_architecture(repo_id: str, config: Path) -> None:
    if not config.is_file():
        return  # check_download says so, in hub terms
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return  # unreadable: the import's own check names the problem
    if isinstance(model_type, str):
        architecture(model_type, f"tailorlm (pulling {repo_id})")


def _fetch(repo_id: str, dest: Path, patterns: list[str]) -> None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError, HFValidationError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    try:
        snapshot_download(repo_id, allow_patterns=patterns, local_dir=dest, etag_timeout=ETAG_TIMEOUT_S)
    except HFValidationError as exc:
        raise InvalidRequestError(f"{repo_id!r} is not a valid Hugging Face repo id", param="ref") from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelNotFoundError(
            f"{repo_id} was not found on the Hugging Face Hub (or it is private or gated); "
            "check the name, or import a local copy with `tailor import PATH`"
        ) from exc
    except Exception as exc:  # connection refused, DNS, timeouts, HTTP errors, HF_HUB_OFFLINE=1 ...
        why = "hub error" if isinstance(exc, HfHubHTTPError) else "no connection"
        raise OfflineError(
            f"cannot download {repo_id} from the Hugging Face Hub ({why}: {_root_cause(exc)}); "
            "import a local copy with `tailor import PATH`"
        ) from exc


def check_download(repo_id: str, folder: Path) -> None:
    """Explain in hub terms when a repo lacks what the store needs (messages would name a temp folder)."""
    if not (folder / "config.json").is_file():
        raise UnsupportedModelError(f"{repo_id} has no config.json, so it is not a transformers model repo")
    if not any(folder.glob("*.safetensors")):
        raise UnsupportedModelError(
            f"{repo_id} has no safetensors weights on the hub; if you trust its pickle weights, download it "
            "yourself and run `tailor import PATH --allow-pickle`"
        )

"""Every setting of tailorlm, declared once.

Each field is read from the environment as `TAILOR_<NAME>` (e.g. `TAILOR_HOME`), can be
overridden by a CLI flag of the same name, and is documented by its description.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from platformdirs import user_data_path
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "smollm2-135m-instruct"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TAILOR_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: user_data_path("tailorlm"),
        description="Root of the local store (models, metadata).",
    )
    default_model: str = Field(DEFAULT_MODEL, description="Model used when none is named.")
    threads: int = Field(0, ge=0, description="CPU threads for torch; 0 keeps torch's default.")
    dtype: str = Field("auto", description="Compute dtype: auto (the stored dtype), float32, bfloat16, float16.")
    max_batch: int = Field(32, ge=1, description="Most requests decoded together in one step.")
    prefill_chunk: int = Field(512, ge=16, description="Most prompt tokens prefilled per request per step.")
    verify_digests: bool = Field(True, description="Verify every file's sha256 when a model loads.")

    @property
    def models_dir(self) -> Path:
        return self.home / "models"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

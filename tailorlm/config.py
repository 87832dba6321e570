"""Every setting of tailorlm, declared once.

Each field is read from the environment as `TAILOR_<NAME>` (e.g. `TAILOR_HOME`), can be
overridden by a CLI flag of the same name, and is documented by its description.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from platformdirs import user_data_path
from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

DEFAULT_MODEL = "smollm2-135m-instruct"
FAST_DTYPE = "fast"  # dtype: int8 where it passes the parity gate (runtime/fast_dtype.py)


class Settings(BaseSettings):
    """Precedence: CLI flag > environment (TAILOR_*) > config file (TAILOR_CONFIG, YAML) > default."""

    model_config = SettingsConfigDict(env_prefix="TAILOR_", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        config_file = os.environ.get("TAILOR_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    home: Path = Field(
        default_factory=lambda: user_data_path("tailorlm"),
        description="Root of the local store (models, metadata).",
    )
    default_model: str = Field(DEFAULT_MODEL, description="Model used when none is named (or `default` is).")
    aliases: dict[str, str] = Field(
        default_factory=dict, description="Other names for models, adapters and presets, e.g. "
        '{"gpt-4o-mini": "pip"}: an application that asks for `gpt-4o-mini` gets the preset `pip` (as JSON in '
        "TAILOR_ALIASES). An alias is looked up before every stored name.")
    threads: int = Field(0, ge=0, description="CPU threads for torch; 0 keeps torch's default.")
    dtype: str = Field("auto", description="Compute dtype: auto (the stored dtype), float32, bfloat16, float16, "
                       "int8 (weight-only int8 linear layers; bfloat16 activations where the CPU multiplies bf16 natively, else "
                       "float32), q4 (4-bit blocks of 32 for the linear layers the native C++ step reads, the output head "
                       "int8; int8 where that step is off), or fast (int8 where it passes the parity gate against the stored weights on this "
                       "machine, else the stored dtype; checked once per model). `tailor serve` defaults to fast.")
    compile: bool = Field(False, description="torch.compile the torch decode step (Llama-family models, int8): "
                          "a compile of about a minute at start; replaces the native kernels.")
    kernels: Literal["native", "torch"] = Field(
        "native", description="Decode step of Llama-family models: native (the whole step in one C++ call, built "
        "for this CPU on first use; needs a C++ compiler, else torch with a warning) or torch (torch operators).")
    isa: Literal["native", "avx2", "generic"] = Field(
        "native", description="Instruction set the native decode step is built for: native (the best this CPU "
        "has: AVX-512 with VNNI/BF16, or AVX2 with FMA), avx2 (the AVX2 kernels even on an AVX-512 CPU, as the "
        "reference AVX2 machines run), or generic (plain loops, the correctness reference).")
    backend: Literal["auto", "native", "llama.cpp", "onnxruntime"] = Field(
        "auto", description="Inference backend: auto picks by artifact (safetensors: native, GGUF: llama.cpp, "
        "ONNX: onnxruntime).")
    max_batch: int = Field(32, ge=1, description="Most requests decoded together in one step.")
    kv_cache_mb: int = Field(
        0, ge=0, description="Most memory for each model's KV cache (MiB), allocated as requests grow: a request "
        "starts only while every running one could reach its full length (prompt + max_tokens) within it, and "
        "waits until then. 0: no limit, except that `tailor serve` sizes it to the memory the model leaves.")
    prefill_chunk: int = Field(
        512, ge=16, description="Most prompt tokens prefilled per step, over all requests; a longer prompt is "
        "prefilled a chunk per step while running requests keep decoding.")
    prefix_cache_mb: int = Field(
        256, ge=0, description="Memory for the keys/values of shared prompt prefixes, reused by later requests "
        "(native backend; 0: off).")
    verify_digests: bool = Field(True, description="Verify every file's sha256 when a model loads.")

    database: Path | None = Field(None, description="The embedded SQLite metadata store; default HOME/tailor.db.")

    # -- server -----------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `tailor serve` binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port `tailor serve` binds.")
    insecure: bool = Field(False, description="Allow binding a non-loopback host with no API keys.")
    public_metrics: bool = Field(
        False, description="Answer /metrics, /openapi.json and /docs without an API key even when keys are on "
        "(for a scraper or a docs page inside a trusted network). /health is always open, for liveness probes.")
    unload_drain_s: float = Field(
        300, ge=0, description="When a model is unloaded to make room for another (memory_budget_gb), how long its "
        "requests in flight may take to finish first; any still running after that ends with an error.")
    memory_budget_gb: float = Field(
        8.0, gt=0, description="Models stay loaded until their weights would exceed this; then the least recently used is unloaded."
    )
    max_queue: int = Field(64, ge=0, description="Requests that may wait per model beyond the running batch; more get 429.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest accepted request body (413 beyond).")
    max_prompt_tokens: int = Field(0, ge=0, description="Largest accepted prompt in tokens; 0: the model's context length.")
    max_n: int = Field(8, ge=1, description="Largest `n` (choices per request).")
    preload: bool = Field(True, description="`tailor serve` loads the default model at startup (importing it into the store if need be), "
                          "so the first request does not wait for it.")
    graceful_timeout: float = Field(10.0, ge=0, description="Seconds in-flight requests get to finish on shutdown.")
    batch_window_s: int = Field(
        24 * 3600, ge=1, description="How long a batch's completion_window (`24h`, the one OpenAI offers) lasts, in "
        "seconds: a batch not finished by then ends `expired`, its finished lines in its files and the rest in its "
        "error file as batch_expired. Lower it to see expiry.")
    train_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="LoRA training: dtype of the frozen base matmuls; auto is bfloat16 on CPUs with native bf16."
    )
    max_upload_bytes: int = Field(
        512 * 1024 * 1024, ge=1024, description="Largest file accepted by POST /v1/files (413 beyond)."
    )
    embedding_model: str = Field(
        "all-minilm-l6-v2", description="Model used by /v1/embeddings when the request names this or `text-embedding-*`."
    )

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def files_dir(self) -> Path:
        """Uploaded file contents, one blob per sha256."""
        return self.home / "files"

    @property
    def jobs_dir(self) -> Path:
        """One folder per fine-tuning job: its config, metrics CSV, checkpoints and result."""
        return self.home / "jobs"

    @property
    def db_path(self) -> Path:
        """The embedded metadata store (SQLite): API keys, files, fine-tuning jobs, vector stores."""
        return self.database or self.home / "tailor.db"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) with every setting as TAILOR_*: a child
        process (the fine-tuning worker) then reads exactly these settings, CLI flags included."""
        env = dict(os.environ if base is None else base)
        for name, value in self.model_dump().items():
            key = f"TAILOR_{name.upper()}"
            if value is None:
                env.pop(key, None)
            else:  # complex values as JSON, which is how pydantic-settings reads them back
                env[key] = json.dumps(value) if isinstance(value, dict | list) else str(value)
        return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

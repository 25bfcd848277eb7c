"""The `model` and `auth` blocks of an ai-proxy plugin, with Kong's field names.

These are validated once when the config loads. String fields may hold Kong's
`$(headers.x)`, `$(uri_captures.x)` and `$(query_params.x)` templates, resolved per
request by the gateway before an adapter sees them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """A config block: unknown fields are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class GeminiOptions(Strict):
    api_endpoint: str | None = Field(None, description="Vertex regional API endpoint (hostname).")
    project_id: str | None = Field(None, description="Vertex project ID.")
    location_id: str | None = Field(None, description="Vertex location ID.")

    @model_validator(mode="after")
    def _all_or_none(self) -> GeminiOptions:
        given = [self.api_endpoint, self.project_id, self.location_id]
        if any(given) and not all(given):
            raise ValueError("api_endpoint, project_id and location_id must be set together")
        return self


class BedrockOptions(Strict):
    aws_region: str | None = Field(None, description="AWS region; defaults to AWS_REGION.")


class CohereOptions(Strict):
    api_version: Literal["v1", "v2"] = Field(
        "v2", description="Cohere API: v2 (/v2/chat, messages) or v1 (/v1/chat, chat_history)."
    )
    embedding_input_type: Literal[
        "search_document", "search_query", "classification", "clustering"
    ] = Field("search_document", description="input_type sent to /v2/embed.")


class HuggingFaceOptions(Strict):
    use_cache: bool | None = None
    wait_for_model: bool | None = None


class ModelOptions(Strict):
    """Kong's `config.model.options`."""

    max_tokens: int | None = Field(None, gt=0, description="max_tokens sent to the model.")
    input_cost: float | None = Field(None, gt=0, description="Cost per 1M prompt tokens.")
    output_cost: float | None = Field(None, gt=0, description="Cost per 1M completion tokens.")
    cache_read_cost: float | None = Field(
        None, ge=0, description="Cost per 1M cached prompt tokens read (defaults to input_cost)."
    )
    cache_write_cost: float | None = Field(
        None, ge=0, description="Cost per 1M prompt tokens written to the cache."
    )
    temperature: float | None = Field(None, ge=0, le=5)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, le=500)
    anthropic_version: str | None = None
    azure_instance: str | None = None
    azure_api_version: str | None = "2023-05-15"
    azure_deployment_id: str | None = None
    llama2_format: Literal["raw", "openai", "ollama"] | None = None
    mistral_format: Literal["openai", "ollama"] | None = None
    upstream_url: str | None = Field(
        None,
        description="Override the upstream: a bare origin keeps the provider's path, "
        "a URL with a path is used as written.",
    )
    upstream_path: str | None = Field(None, description="Deprecated in Kong: use upstream_url.")
    gemini: GeminiOptions | None = None
    bedrock: BedrockOptions | None = None
    huggingface: HuggingFaceOptions | None = None
    cohere: CohereOptions | None = None
    mock_response: str | None = Field(
        None, description="provider 'mock' only: the fixed answer (default: echo the prompt)."
    )
    mock_chunk_delay_ms: int = Field(
        0, ge=0, description="provider 'mock' only: delay between streamed chunks."
    )

    @model_validator(mode="after")
    def _url(self) -> ModelOptions:
        url = self.upstream_url
        if url and "$(" not in url and "://" not in url:
            raise ValueError(f"upstream_url must be an absolute URL, got {url!r}")
        return self


class ModelConfig(Strict):
    """Kong's `config.model`."""

    provider: str = Field(description="The upstream's API format, e.g. openai or anthropic.")
    name: str | None = Field(None, description="The model; a client asking for another gets 400.")
    options: ModelOptions = Field(default_factory=ModelOptions)


class AuthConfig(Strict):
    """Kong's `config.auth`: how the gateway authenticates to the provider."""

    header_name: str | None = None
    header_value: str | None = None
    param_name: str | None = None
    param_value: str | None = None
    param_location: Literal["query", "body"] | None = None
    allow_override: bool = Field(
        False, description="A value the client sent itself wins over the configured one."
    )
    gcp_use_service_account: bool = False
    gcp_service_account_json: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None

    @model_validator(mode="after")
    def _pairs(self) -> AuthConfig:
        if bool(self.header_name) != bool(self.header_value):
            raise ValueError("header_name and header_value must be set together")
        param = [self.param_name, self.param_value, self.param_location]
        if any(param) and not all(param):
            raise ValueError("param_name, param_value and param_location must be set together")
        return self

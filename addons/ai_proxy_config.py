"""The config block of Kong's ai-proxy plugin (and of the `llm` blocks of the plugins
that call an LLM themselves, such as ai-request-transformer).

Kept out of `addons.config` so that a policy module can use it without importing the
config loader (which imports every policy module to register its config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

import providers
from providers.base import RouteType
from providers.options import AuthConfig, ModelConfig, Strict


def _llm_formats() -> tuple[str, ...]:
    """Kong's `llm_format` values: openai, and each provider's own (its `native_format`),
    read from the provider registry so that a new provider file adds its format."""
    native = {p.native_format for p in providers.registry().values() if p.native_format}
    return ("openai", *sorted(native - {"openai"}))


#: the `llm_format` values (a Literal, so that the JSON schema lists them as an enum)
LLMFormat = Literal[_llm_formats()]  # type: ignore[valid-type]


class LoggingConfig(Strict):
    log_statistics: bool = Field(
        True,
        description="Put token usage, cost and timings in the call record. Kong's default is "
        "false; llmitm's is true, since usage is what the exporters are for.",
    )
    log_payloads: bool = Field(
        False, description="Put the request and response bodies in the call record."
    )


class AIProxyConfig(Strict):
    """Kong's ai-proxy: translate OpenAI-format requests for the configured provider."""

    route_type: RouteType
    auth: AuthConfig = Field(default_factory=AuthConfig)
    model: ModelConfig
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    response_streaming: Literal["allow", "deny", "always"] = "allow"
    max_request_body_size: int = Field(
        10 * 1024 * 1024,
        gt=0,
        description="Largest request body (bytes) the gateway reads; larger ones get 413. "
        "Kong's default is 8 KiB, too small for chats with history or images.",
    )
    model_name_header: bool = Field(True, description="Send X-LLM-Model: provider/model.")
    llm_format: LLMFormat = Field(  # type: ignore[valid-type]
        "openai",
        description="The format clients speak: openai (translated to the provider), or "
        "the provider's own (passed through unchanged, usage and payloads still recorded).",
    )

    @field_validator("model")
    @classmethod
    def _known_provider(cls, model: ModelConfig) -> ModelConfig:
        if model.provider not in providers.registry():
            known = ", ".join(providers.registry())
            raise ValueError(f"unknown provider {model.provider!r} (expected one of: {known})")
        return model

    @model_validator(mode="after")
    def _provider_accepts(self) -> AIProxyConfig:
        provider = providers.get(self.model.provider)
        errors = provider.config_errors(self.model, self.route_type, self.auth)
        if self.llm_format != "openai":
            if provider.native_format != self.llm_format:
                errors.append(
                    f"llm_format {self.llm_format!r} needs provider {self.llm_format!r}, "
                    f"not {provider.name!r}"
                    + ("" if provider.native_format else " (it only takes llm_format 'openai')")
                )
            if self.route_type is RouteType.PRESERVE:
                errors.append("llm_format applies to llm/v1/* route types, not 'preserve'")
        if errors:
            raise ValueError("; ".join(errors))
        return self

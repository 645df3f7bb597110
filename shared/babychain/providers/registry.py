"""Which provider runs a step: by mode, by the model's provider, and by an optional ordered route list per model.

`local` mode runs every model on the built-in local provider. `byok` runs each model on its own provider (BFL or
BytePlus) with the server's key. `babysea` runs every model on BabySea, which fails over between inference providers
itself. `BABYCHAIN_MODEL_ROUTES` adds failover beyond that: for example `{"bytedance/seedream-4.5": ["byteplus",
"babysea"]}` moves a Seedream step to BabySea when BytePlus keeps failing transiently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from babychain.config import Settings
from babychain.errors import ConfigurationError, invalid_input
from babychain.providers.base import Provider

if TYPE_CHECKING:  # for annotations only: handlers that never validate do not load the catalog (pydantic)
    from babychain.chains.catalog import ModelSpec

KEY_VARIABLES = {"bfl": "BFL_API_KEY", "byteplus": "ARK_API_KEY", "babysea": "BABYSEA_API_KEY"}


class ProviderRegistry:
    def __init__(
        self, mode: str, providers: Mapping[str, Provider], extra_routes: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        self.mode = mode
        self.providers = dict(providers)
        self.extra_routes = {model: list(names) for model, names in (extra_routes or {}).items()}

    def _primary(self, model: ModelSpec) -> str:
        return {"local": "local", "babysea": "babysea"}.get(self.mode, model.provider)

    def route_names(self, model: ModelSpec) -> list[str]:
        names = [self._primary(model)]
        for name in self.extra_routes.get(model.id, []):
            if name not in names:
                names.append(name)
        return names

    def routes(self, model: ModelSpec) -> list[Provider]:
        return [self.named(name) for name in self.route_names(model)]

    def named(self, name: str) -> Provider:
        try:
            return self.providers[name]
        except KeyError:
            raise ConfigurationError(f"No {name} provider is configured ({KEY_VARIABLES.get(name, name)}).") from None

    def check_configured(self, model: ModelSpec, field: str) -> None:
        """Create-time check: the step's first route must be usable, or the caller hears it now, not minutes later."""
        name = self._primary(model)
        if name not in self.providers:
            raise invalid_input(
                f"{model.id} needs {KEY_VARIABLES.get(name, name)} on the BabyChain server in {self.mode} mode.",
                field,
                code="byok_credentials_missing" if self.mode == "byok" else "provider_not_configured",
            )


def registry_from_settings(settings: Settings, overrides: Mapping[str, Provider] | None = None) -> ProviderRegistry:
    providers: dict[str, Any] = {}
    loopback = settings.allow_loopback_http
    if settings.provider_mode == "local":
        from babychain.providers.local import LocalProvider

        if not settings.local_provider_url:
            raise ConfigurationError("BABYCHAIN_LOCAL_PROVIDER_URL is not set (the local runner sets it).")
        providers["local"] = LocalProvider(settings.local_provider_url)
    if settings.bfl_api_key:
        from babychain.providers.bfl import BflProvider

        providers["bfl"] = BflProvider(
            settings.bfl_api_key,
            base_url=settings.bfl_api_base_url,
            webhook_secret=settings.bfl_webhook_secret or None,
            allow_loopback=loopback,
        )
    if settings.ark_api_key:
        from babychain.providers.byteplus import BytePlusProvider

        providers["byteplus"] = BytePlusProvider(
            settings.ark_api_key, base_url=settings.ark_api_base_url, allow_loopback=loopback
        )
    if settings.babysea_api_key:
        from babychain.providers.babysea import BabySeaProvider

        providers["babysea"] = BabySeaProvider(
            settings.babysea_api_key,
            base_url=settings.babysea_api_base_url,
            webhook_secret=settings.babysea_webhook_secret or None,
            allow_loopback=loopback,
        )
    providers.update(overrides or {})
    if settings.provider_mode == "byok" and not {"bfl", "byteplus"} & set(providers):
        raise ConfigurationError("BABYCHAIN_PROVIDER_MODE=byok needs BFL_API_KEY and/or ARK_API_KEY.")
    if settings.provider_mode == "babysea" and "babysea" not in providers:
        raise ConfigurationError("BABYCHAIN_PROVIDER_MODE=babysea needs BABYSEA_API_KEY.")
    return ProviderRegistry(settings.provider_mode, providers, settings.model_routes)

"""Every template parses, and the Function App is configured the Flex Consumption way."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.infra.bicep import (
    INFRA,
    Template,
    bicep_files,
    body,
    function,
    is_reference,
    literal,
    variable,
)

pytestmark = pytest.mark.infra

FLEX_FORBIDDEN_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_TIME_ZONE",
}


@pytest.mark.parametrize("path", bicep_files(), ids=lambda path: path.relative_to(INFRA).as_posix())
def test_template_parses(parsed: dict[Path, Template | Exception], path: Path) -> None:
    """The .bicep file parses with pycep-parser."""
    result = parsed[path]
    assert not isinstance(result, Exception), f"{path}: {result}"


def test_every_module_path_exists(templates: dict[str, Template]) -> None:
    """Every local module a template references is a file under infra/."""
    for name, template in templates.items():
        for module in template.get("modules", {}).values():
            target = (INFRA / name).parent / module["detail"]["path"]
            assert target.is_file(), f"{name} references missing {target}"


def _app_settings_sources(templates: dict[str, Template]) -> dict[str, object]:
    """The host's settings: every object the appsettings union draws from besides the product's."""
    app = templates["modules/function-app.bicep"]
    union = function(body(app["resources"]["appSettings"])["properties"], "union")
    settings: dict[str, object] = {}
    for argument in list(union.values())[1:]:
        value = variable(app, argument)
        if "operator" in value:
            value = value["operator"]["operands"]["true_value"]
        settings.update(value)
    return settings


def test_host_reaches_storage_with_the_managed_identity(templates: dict[str, Template]) -> None:
    """AzureWebJobsStorage is identity-based: credential, client id, blob and queue endpoints."""
    settings = _app_settings_sources(templates)
    assert literal(settings["AzureWebJobsStorage__credential"]) == "managedidentity"
    assert is_reference(settings["AzureWebJobsStorage__clientId"], "userAssignedIdentityClientId")
    for key in ("AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__queueServiceUri"):
        assert key in settings
    assert "AzureWebJobsStorage" not in settings, "a connection string would carry a key"


def test_telemetry_is_authenticated_with_the_identity(templates: dict[str, Template]) -> None:
    """The worker sends telemetry with the identity to an App Insights without local auth."""
    settings = _app_settings_sources(templates)
    assert literal(settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"]) == "true"
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in settings
    authentication: Any = settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
    branches = authentication["operator"]["operands"]
    assert (
        literal(branches["true_value"])
        == "ClientId=${userAssignedIdentityClientId};Authorization=AAD"
    )
    assert literal(branches["false_value"]) == "Authorization=AAD"
    insights = body(templates["modules/monitoring.bicep"]["resources"]["applicationInsights"])
    assert insights["properties"]["DisableLocalAuth"] is True


def test_no_setting_flex_consumption_refuses(templates: dict[str, Template]) -> None:
    """No FUNCTIONS_WORKER_RUNTIME, WEBSITE_RUN_FROM_PACKAGE or WEBSITE_TIME_ZONE is set."""
    assert not FLEX_FORBIDDEN_SETTINGS & set(_app_settings_sources(templates))
    products = templates["main.bicep"]["variables"]
    for declaration in products.values():
        value = declaration["value"]
        if isinstance(value, dict):
            assert not FLEX_FORBIDDEN_SETTINGS & set(value)


def test_runtime_is_the_python_the_project_targets(templates: dict[str, Template]) -> None:
    """functionAppConfig.runtime is python at the version pyproject.toml type-checks for."""
    app = templates["modules/function-app.bicep"]
    runtime = body(app["resources"]["functionApp"])["properties"]["functionAppConfig"]["runtime"]
    pyproject = tomllib.loads((INFRA.parent / "pyproject.toml").read_text())
    assert literal(runtime["name"]) == "python"
    assert literal(variable(app, runtime["version"])) == pyproject["tool"]["mypy"]["python_version"]


def test_site_is_https_only_with_tls_1_2_and_no_ftp(templates: dict[str, Template]) -> None:
    """The site refuses plain HTTP, TLS below 1.2, FTP and basic-auth publishing."""
    app = templates["modules/function-app.bicep"]
    site = body(app["resources"]["functionApp"])["properties"]
    assert site["httpsOnly"] is True
    assert literal(site["siteConfig"]["minTlsVersion"]) == "1.2"
    assert literal(site["siteConfig"]["ftpsState"]) == "Disabled"
    for policy in ("ftpPublishing", "scmPublishing"):
        assert body(app["resources"][policy])["properties"]["allow"] is False


def test_storage_refuses_shared_keys(templates: dict[str, Template]) -> None:
    """The app's storage account accepts only Microsoft Entra ID, over TLS 1.2+."""
    storage = body(templates["modules/storage.bicep"]["resources"]["storage"])["properties"]
    assert storage["allowSharedKeyAccess"] is False
    assert storage["allowBlobPublicAccess"] is False
    assert literal(storage["minimumTlsVersion"]) == "TLS1_2"

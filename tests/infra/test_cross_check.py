"""The templates against the code and Azure's built-in role ids.

Every setting the product reads is set by main.bicep with the product's own default, and the
identity gets exactly the built-in roles it needs, each on the one resource it concerns.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest

from tests.infra.bicep import (
    INFRA,
    Template,
    body,
    condition,
    dotted,
    function,
    is_reference,
    literal,
    variable,
)

pytestmark = pytest.mark.infra

# Azure's built-in role ids, plus Key Vault Secrets User for the PAT's vault.
BUILT_IN_ROLES = {
    "7f951dda-4ed3-4680-a7ca-43fe172d538d": "AcrPull",
    "c2f4ef07-c644-48eb-af81-4b1b4947fb11": "AcrDelete",
    "2efddaa5-3f1f-4df3-97df-af3f13818f4c": "Container Registry Repository Contributor",
    "bfdb9389-c9a5-478a-bb2f-ba9ca092c3c7": "Container Registry Repository Catalog Lister",
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
}

# The resources a role may be assigned on, and the roles each may carry. Nothing wider: no
# resource group, subscription or management group scope.
ROLES_BY_SCOPE_TYPE = {
    "Microsoft.ContainerRegistry/registries": {
        "AcrPull",
        "AcrDelete",
        "Container Registry Repository Contributor",
        "Container Registry Repository Catalog Lister",
    },
    "Microsoft.Storage/storageAccounts": {
        "Storage Blob Data Owner",
        "Storage Queue Data Contributor",
        "Storage Table Data Contributor",
    },
    "Microsoft.KeyVault/vaults": {"Key Vault Secrets User"},
    "Microsoft.Insights/components": {"Monitoring Metrics Publisher"},
}

# Settings the template leaves unset on purpose.
NOT_SET = {
    "AZURE_TENANT_ID": "managed identity only: no service principal",
    "AZURE_CLIENT_SECRET": "managed identity only: no service principal",
    "SSL_CERT_FILE": "Azure's endpoints chain to public CAs",
}


def _setting_defaults() -> Mapping[str, str | None]:
    try:
        from cleanup.settings import SETTING_DEFAULTS
    except ModuleNotFoundError as error:
        if error.name != "cleanup.settings":
            raise
        pytest.skip("cleanup.settings (SETTING_DEFAULTS) does not exist yet")
    return SETTING_DEFAULTS


@pytest.fixture(scope="module")
def setting_defaults() -> Mapping[str, str | None]:
    """Every environment variable the product reads, with its default."""
    return _setting_defaults()


def _product_settings(main: Template) -> dict[str, tuple[object, object]]:
    """main.bicep's product settings: name -> (value expression, condition or None).

    productSettings is a union of objects; an object behind `cond ? {...} : {}` (or
    `cond ? {} : {...}`) is set only on that branch, recorded as the condition.
    """
    settings: dict[str, tuple[object, object]] = {}
    for argument in function(variable(main, "productSettings"), "union").values():
        value = variable(main, argument)
        if "operator" in value:
            operands = value["operator"]["operands"]
            assert value["operator"]["type"] == "conditional"
            if operands["true_value"]:
                assert not operands["false_value"]
                branch, when = operands["true_value"], operands["condition"]
            else:
                branch, when = operands["false_value"], {"not": operands["condition"]}
        else:
            branch, when = value, None
        for name, expression in branch.items():
            assert name not in settings, f"{name} is set twice"
            settings[name] = (expression, when)
    return settings


def test_product_settings_reach_the_function_app(templates: dict[str, Template]) -> None:
    """main.bicep's productSettings are the first source of the app's appsettings."""
    main = templates["main.bicep"]
    module = body(main["modules"]["functionApp"])
    assert is_reference(module["params"]["productSettings"], "productSettings")
    app = templates["modules/function-app.bicep"]
    union = function(body(app["resources"]["appSettings"])["properties"], "union")
    assert is_reference(union["arg_1"], "productSettings")


def test_every_setting_the_product_reads_is_set_with_its_default(
    templates: dict[str, Template], setting_defaults: Mapping[str, str | None]
) -> None:
    """Each SETTING_DEFAULTS name is an app setting from a parameter with the same default."""
    main = templates["main.bicep"]
    settings = _product_settings(main)
    parameters = main["parameters"]
    for name, default in setting_defaults.items():
        if name in NOT_SET:
            assert name not in settings, f"{name} is set, but {NOT_SET[name]}"
            assert default is None, f"{name} has a default the template would not apply"
            continue
        assert name in settings, f"{name} is read by the product but not set by the template"
        expression, when = settings[name]
        if name == "CLEANUP_REGISTRY":
            assert dotted(expression) == "registry.properties.loginServer"
            assert main["resources"]["registry"]["existing"] is True
        elif name == "AZURE_CLIENT_ID":
            assert dotted(expression) == "identity.outputs.clientId"
            assert is_reference(when, "useUserAssigned")
        elif name == "AZURE_DEVOPS_PAT":
            assert literal(expression).startswith("@Microsoft.KeyVault(SecretUri=${keyVault.")
            assert is_reference(when, "useAzureDevOpsPat")
        else:
            assert is_reference(expression), f"{name} is not a parameter: {expression!r}"
            parameter = parameters[str(expression)]
            if default is None:
                _assert_unset_by_default(name, parameter, when, str(expression))
            else:
                assert when is None, f"{name} is set only under a condition"
                assert parameter["default"] is not None, f"{name} has no default"
                assert literal(parameter["default"]) == default, name


def _assert_unset_by_default(name: str, parameter: dict[str, Any], when: object, ref: str) -> None:
    """A setting without a product default: a required parameter, or '' and left out when empty."""
    if parameter["default"] is None:
        assert when is None, f"{name} is required but set only under a condition"
        return
    assert literal(parameter["default"]) == "", f"{name} has a default the product does not"
    empty = function(when["not"], "empty") if isinstance(when, dict) and "not" in when else None
    assert empty is not None, f"{name} is not left out when empty"
    assert is_reference(empty["item_to_test"], ref), name


def test_template_sets_no_setting_the_product_does_not_read(
    templates: dict[str, Template], setting_defaults: Mapping[str, str | None]
) -> None:
    """Every product setting main.bicep sets is a name the product reads (no typos)."""
    assert set(_product_settings(templates["main.bicep"])) <= set(setting_defaults)


def _role_assignments(templates: dict[str, Template]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (file, symbol, declaration)
        for file, template in templates.items()
        for symbol, declaration in template.get("resources", {}).items()
        if declaration["type"] == "Microsoft.Authorization/roleAssignments"
    ]


def test_role_assignments_exist(templates: dict[str, Template]) -> None:
    """The templates grant roles (so the checks below are not vacuous)."""
    assert len(_role_assignments(templates)) >= 7


def test_no_custom_role_is_defined(templates: dict[str, Template]) -> None:
    """No template defines its own role: only built-in ones are assigned."""
    for template in templates.values():
        for declaration in template.get("resources", {}).values():
            assert declaration["type"] != "Microsoft.Authorization/roleDefinitions"


@pytest.mark.parametrize(
    "role",
    ["registry", "storage", "vault", "insights"],
)
def test_role_assignments_are_built_in_and_scoped_to_one_resource(
    templates: dict[str, Template], role: str
) -> None:
    """Each role is a built-in id, on a registry, storage account, vault or App Insights only."""
    expected_type = {
        "registry": "Microsoft.ContainerRegistry/registries",
        "storage": "Microsoft.Storage/storageAccounts",
        "vault": "Microsoft.KeyVault/vaults",
        "insights": "Microsoft.Insights/components",
    }[role]
    granted: set[str] = set()
    for file, symbol, declaration in _role_assignments(templates):
        template = templates[file]
        assignment = body(declaration)
        scope = assignment.get("scope")
        assert is_reference(scope), f"{file}:{symbol} has no resource scope (deployment scope)"
        scope_type = template["resources"][str(scope)]["type"]
        assert scope_type in ROLES_BY_SCOPE_TYPE, f"{file}:{symbol} is scoped to a {scope_type}"
        if scope_type != expected_type:
            continue
        definition = function(
            assignment["properties"]["roleDefinitionId"], "subscription_resource_id"
        )
        assert literal(definition["resource_type"]) == "Microsoft.Authorization/roleDefinitions"
        role_variable = definition["resource_name_1"]
        role_id = literal(variable(template, role_variable))
        assert role_id in BUILT_IN_ROLES, f"{file}:{symbol} assigns unknown role {role_id}"
        role_name = BUILT_IN_ROLES[role_id]
        assert role_name in ROLES_BY_SCOPE_TYPE[scope_type], f"{role_name} on a {scope_type}"
        name = function(assignment["name"], "guid")
        assert dotted(name["base_string"]) == f"{scope}.id", f"{file}:{symbol} name"
        assert is_reference(name["extra_string_1"], "principalId"), f"{file}:{symbol} name"
        assert is_reference(name["extra_string_2"], str(role_variable)), f"{file}:{symbol} name"
        assert is_reference(assignment["properties"]["principalId"], "principalId")
        _assert_role_named_in_a_comment(file, str(role_variable), role_name)
        granted.add(role_name)
    assert granted, f"no role on a {expected_type}"


def _assert_role_named_in_a_comment(file: str, role_variable: str, role_name: str) -> None:
    """The role id's declaration carries the role's name in a comment (comments are not parsed)."""
    source = (INFRA / file).read_text()
    line = re.search(rf"^var {re.escape(role_variable)} = .*$", source, re.MULTILINE)
    assert line, f"{file}: no var {role_variable}"
    assert line.group(0).endswith(f"// {role_name}"), f"{file}: {line.group(0)}"


def test_registry_roles_follow_the_permission_mode(templates: dict[str, Template]) -> None:
    """rbac grants AcrPull + AcrDelete; abac grants Repository Contributor + Catalog Lister."""
    template = templates["modules/registry-roles.bicep"]
    by_mode: dict[str, set[str]] = {}
    for symbol, declaration in template["resources"].items():
        if declaration["type"] != "Microsoft.Authorization/roleAssignments":
            continue
        when = condition(declaration)
        assert isinstance(when, dict), f"{symbol} is granted in every mode"
        operands = when["operator"]["operands"]
        assert is_reference(operands["operand_1"], "permissionMode")
        definition = function(
            body(declaration)["properties"]["roleDefinitionId"], "subscription_resource_id"
        )
        role = BUILT_IN_ROLES[literal(variable(template, definition["resource_name_1"]))]
        by_mode.setdefault(literal(operands["operand_2"]), set()).add(role)
    assert by_mode == {
        "rbac": {"AcrPull", "AcrDelete"},
        "abac": {
            "Container Registry Repository Contributor",
            "Container Registry Repository Catalog Lister",
        },
    }


def test_pat_vault_uses_rbac(templates: dict[str, Template]) -> None:
    """The PAT's vault authorizes by RBAC, not access policies."""
    vault = body(templates["modules/key-vault.bicep"]["resources"]["vault"])["properties"]
    assert vault["enableRbacAuthorization"] is True
    assert "accessPolicies" not in vault


def test_deploy_docs_name_what_the_alerts_query(templates: dict[str, Template]) -> None:
    """docs/deploy.md names every customDimensions key the alert queries read."""
    alerts = templates["modules/alerts.bicep"]
    names: set[str] = set()
    for declaration in alerts["resources"].values():
        if declaration["type"] != "Microsoft.Insights/scheduledQueryRules":
            continue
        for criterion in body(declaration)["properties"]["criteria"]["allOf"]:
            query = criterion["query"]
            if isinstance(query, dict):  # format('''...''', hours)
                query = function(query, "format")["format_string"]
            names.update(re.findall(r'customDimensions\["([^"]+)"\]', literal(query)))
    assert names == {"cleanup.outcome", "cleanup.registry", "cleanup.deleted"}
    docs = (INFRA.parent / "docs" / "deploy.md").read_text()
    for name in names:
        assert f"`{name}`" in docs, f"docs/deploy.md does not name {name}"

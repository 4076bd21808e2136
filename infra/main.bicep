// acr-pr-cleanup: everything the Function App needs, deployed into one new resource group,
// plus role assignments on an existing registry (possibly in another resource group).
// `azd up` or `az deployment sub create` (docs/deploy.md).
targetScope = 'subscription'

// ---------------------------------------------------------------------------------------------
// Where
// ---------------------------------------------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('Environment name (azd); part of every resource name.')
param environmentName string

@minLength(1)
@description('Region of the resource group and every resource in it (one with Flex Consumption).')
param location string

@description('Resource group to create; empty for rg-<environmentName>.')
param resourceGroupName string = ''

// ---------------------------------------------------------------------------------------------
// The registry to clean and the identity that cleans it
// ---------------------------------------------------------------------------------------------

@description('Name of the existing container registry to clean.')
param registryName string

@description('Resource group of the registry; empty for the app\'s own resource group.')
param registryResourceGroupName string = ''

@description('rbac: AcrPull + AcrDelete on the registry. abac: for registries whose role assignment mode is AbacRepositoryPermissions (Repository Contributor + Catalog Lister).')
@allowed([
  'rbac'
  'abac'
])
param registryPermissionMode string = 'rbac'

@description('UserAssigned (default): an identity that outlives the app. SystemAssigned: the app\'s own.')
@allowed([
  'UserAssigned'
  'SystemAssigned'
])
param identityType string = 'UserAssigned'

// ---------------------------------------------------------------------------------------------
// The product's settings (docs/contract.md): same names, same defaults, one parameter each.
// CLEANUP_REGISTRY comes from the registry, AZURE_CLIENT_ID from the identity.
// AZURE_TENANT_ID / AZURE_CLIENT_SECRET are never set (managed identity only), nor is
// SSL_CERT_FILE (Azure's endpoints chain to public CAs).
// ---------------------------------------------------------------------------------------------

@description('CLEANUP_REPOSITORIES: comma-separated glob patterns of repositories; !pattern excludes.')
param cleanupRepositories string = '*'

@description('CLEANUP_TAG_PATTERN: regular expression a pull-request tag matches in full; group pr is the id.')
param cleanupTagPattern string = '(?i)^pr-?(?P<pr>\\d+)$'

@description('AZURE_DEVOPS_ORG_URL: organization URL, https://dev.azure.com/contoso.')
param azureDevOpsOrgUrl string

@description('AZURE_DEVOPS_PROJECT: project name or id; empty to look pull requests up organization-wide.')
param azureDevOpsProject string = ''

@description('CLEANUP_DRY_RUN: true plans and reports, deletes nothing.')
@allowed([
  'true'
  'false'
])
param cleanupDryRun string = 'false'

@description('CLEANUP_GRACE_PERIOD: keep a tag until its pull request has been closed this long (36h, 7d, P7D).')
param cleanupGracePeriod string = '0'

@description('CLEANUP_UNKNOWN_PR: keep or delete tags whose pull request does not exist.')
@allowed([
  'keep'
  'delete'
])
param cleanupUnknownPr string = 'keep'

@description('CLEANUP_DELETE_MANIFESTS: true deletes a manifest once all its tags are deleted.')
@allowed([
  'true'
  'false'
])
param cleanupDeleteManifests string = 'true'

@description('CLEANUP_MAX_DELETIONS: a plan deleting more tags than this deletes nothing and fails.')
param cleanupMaxDeletions string = '1000'

@description('CLEANUP_CONCURRENCY: most requests in flight to each service at once.')
param cleanupConcurrency string = '16'

@description('CLEANUP_SCHEDULE: NCRONTAB schedule of the nightly run, in UTC.')
param cleanupSchedule string = '0 0 2 * * *'

@description('CLEANUP_STORAGE_CONTAINER: blob container of run reports and the run lock (created here).')
param cleanupStorageContainer string = 'cleanup-runs'

@description('CLEANUP_RUN_QUEUE: queue of requested runs (created here).')
param cleanupRunQueue string = 'cleanup-runs'

@description('true: AZURE_DEVOPS_PAT is a Key Vault reference to a secret in a vault created here; store the PAT there after deployment. false: the identity gets Azure DevOps tokens from Microsoft Entra ID.')
param useAzureDevOpsPat bool = false

@description('Name of the Key Vault secret holding the PAT (with useAzureDevOpsPat).')
param azureDevOpsPatSecretName string = 'azure-devops-pat'

// ---------------------------------------------------------------------------------------------
// Alerts
// ---------------------------------------------------------------------------------------------

@description('Address the alerts are mailed to.')
param alertEmail string

@description('Alert when one run deletes more tags than this.')
@minValue(0)
param deletionAlertThreshold int = 500

@description('Alert when no run has succeeded for this many hours.')
@minValue(1)
@maxValue(48)
param missedRunAlertHours int = 26

// ---------------------------------------------------------------------------------------------

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var useUserAssigned = identityType == 'UserAssigned'
var deploymentContainerName = 'app-package-${resourceToken}'

resource resourceGroup 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: registryName
  scope: az.resourceGroup(empty(registryResourceGroupName) ? resourceGroup.name : registryResourceGroupName)
}

module identity 'modules/identity.bicep' = if (useUserAssigned) {
  name: 'identity'
  scope: resourceGroup
  params: {
    name: 'id-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: resourceGroup
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    runContainerName: cleanupStorageContainer
    runQueueName: cleanupRunQueue
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: resourceGroup
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module keyVault 'modules/key-vault.bicep' = if (useAzureDevOpsPat) {
  name: 'key-vault'
  scope: resourceGroup
  params: {
    name: 'kv-${resourceToken}'
    location: location
    tags: tags
    patSecretName: azureDevOpsPatSecretName
  }
}

// The product's settings, each from the parameter of the same name. Settings without a default
// are left out when empty, so the product sees them unset rather than blank. AZURE_CLIENT_ID
// alone makes azure-identity pick the user-assigned identity.
var alwaysSetProductSettings = {
  CLEANUP_REGISTRY: registry.properties.loginServer
  CLEANUP_REPOSITORIES: cleanupRepositories
  CLEANUP_TAG_PATTERN: cleanupTagPattern
  AZURE_DEVOPS_ORG_URL: azureDevOpsOrgUrl
  CLEANUP_DRY_RUN: cleanupDryRun
  CLEANUP_GRACE_PERIOD: cleanupGracePeriod
  CLEANUP_UNKNOWN_PR: cleanupUnknownPr
  CLEANUP_DELETE_MANIFESTS: cleanupDeleteManifests
  CLEANUP_MAX_DELETIONS: cleanupMaxDeletions
  CLEANUP_CONCURRENCY: cleanupConcurrency
  CLEANUP_SCHEDULE: cleanupSchedule
  CLEANUP_STORAGE_CONTAINER: cleanupStorageContainer
  CLEANUP_RUN_QUEUE: cleanupRunQueue
}
var projectSetting = empty(azureDevOpsProject) ? {} : { AZURE_DEVOPS_PROJECT: azureDevOpsProject }
var patSetting = useAzureDevOpsPat ? { AZURE_DEVOPS_PAT: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.patSecretUri})' } : {}
var clientIdSetting = useUserAssigned ? { AZURE_CLIENT_ID: identity.outputs.clientId } : {}
var productSettings = union(alwaysSetProductSettings, projectSetting, patSetting, clientIdSetting)

module functionApp 'modules/function-app.bicep' = {
  name: 'function-app'
  scope: resourceGroup
  params: {
    name: 'func-${resourceToken}'
    planName: 'plan-${resourceToken}'
    location: location
    tags: union(tags, { 'azd-service-name': 'cleanup' })
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    identityType: identityType
    userAssignedIdentityId: useUserAssigned ? identity.outputs.id : ''
    userAssignedIdentityClientId: useUserAssigned ? identity.outputs.clientId : ''
    productSettings: productSettings
  }
}

var principalId = useUserAssigned ? identity.outputs.principalId : functionApp.outputs.principalId

module appRoles 'modules/app-roles.bicep' = {
  name: 'app-roles'
  scope: resourceGroup
  params: {
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultName: useAzureDevOpsPat ? keyVault.outputs.name : ''
    principalId: principalId
  }
}

module registryRoles 'modules/registry-roles.bicep' = {
  name: 'registry-roles'
  scope: az.resourceGroup(empty(registryResourceGroupName) ? resourceGroup.name : registryResourceGroupName)
  params: {
    registryName: registryName
    principalId: principalId
    permissionMode: registryPermissionMode
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  scope: resourceGroup
  params: {
    namePrefix: 'acr-cleanup-${resourceToken}'
    location: location
    tags: tags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    alertEmail: alertEmail
    deletionAlertThreshold: deletionAlertThreshold
    missedRunAlertHours: missedRunAlertHours
  }
}

output AZURE_RESOURCE_GROUP string = resourceGroup.name
output FUNCTION_APP_NAME string = functionApp.outputs.name
output FUNCTION_APP_HOST_NAME string = functionApp.outputs.defaultHostName
@description('Add this principal to the Azure DevOps organization (docs/deploy.md).')
output IDENTITY_PRINCIPAL_ID string = principalId
@description('Client id of the user-assigned identity; empty with a system-assigned one (az ad sp show --id <principal id> --query appId).')
output IDENTITY_CLIENT_ID string = useUserAssigned ? identity.outputs.clientId : ''
output KEY_VAULT_NAME string = useAzureDevOpsPat ? keyVault.outputs.name : ''

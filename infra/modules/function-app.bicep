// Flex Consumption plan and the Python Function App. The app reaches its storage and
// Application Insights with its managed identity only; no connection string holds a key.

param name string
param planName string
param location string
param tags object = {}

@description('Storage account the host and the deployment package use.')
param storageAccountName string

@description('Blob container Flex Consumption deploys the app package to.')
param deploymentContainerName string

param applicationInsightsConnectionString string

@allowed([
  'UserAssigned'
  'SystemAssigned'
])
param identityType string

@description('Resource id of the user-assigned identity; empty for a system-assigned one.')
param userAssignedIdentityId string = ''

@description('Client id of the user-assigned identity; empty for a system-assigned one.')
param userAssignedIdentityClientId string = ''

@description('The product\'s own settings (docs/contract.md), already resolved by main.bicep.')
param productSettings object

@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

// The tests run on Python 3.11 (pyproject.toml); deploy the runtime they ran on.
var pythonVersion = '3.11'
var useUserAssigned = identityType == 'UserAssigned'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:A nightly batch job: a zone outage delays one run, which the missed-run alert reports; zone-redundant Flex Consumption is not offered in every region.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

var userAssignedDeploymentAuthentication = {
  type: 'UserAssignedIdentity'
  userAssignedIdentityResourceId: userAssignedIdentityId
}
var systemAssignedDeploymentAuthentication = {
  type: 'SystemAssignedIdentity'
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_16:The identity is always set; its type comes from the identityType parameter (UserAssigned or SystemAssigned), which checkov does not resolve.
  // checkov:skip=CKV_AZURE_222:POST /api/cleanup is the product's HTTP API and must stay reachable; it is protected by a function key.
  // checkov:skip=CKV_AZURE_17:Callers (curl, pipelines) authenticate with the function key; requiring client certificates would lock them out.
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales to zero between runs; the timer runs as a singleton, so a standby instance would buy nothing.
  // checkov:skip=CKV_AZURE_213:Flex Consumption has no load-balanced instance pool to evict unhealthy instances from; failures surface through the run alerts.
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: identityType
    userAssignedIdentities: useUserAssigned ? { '${userAssignedIdentityId}': {} } : null
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // Key Vault references (AZURE_DEVOPS_PAT) resolve with the app's identity, not a default one.
    keyVaultReferenceIdentity: useUserAssigned ? userAssignedIdentityId : 'SystemAssigned'
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: useUserAssigned ? userAssignedDeploymentAuthentication : systemAssignedDeploymentAuthentication
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

// What the Functions host needs. No FUNCTIONS_WORKER_RUNTIME, WEBSITE_RUN_FROM_PACKAGE or
// WEBSITE_TIME_ZONE: Flex Consumption takes the runtime from functionAppConfig and runs in UTC.
var hostSettings = {
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: useUserAssigned ? 'ClientId=${userAssignedIdentityClientId};Authorization=AAD' : 'Authorization=AAD'
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
}

// Without __clientId the host uses the system-assigned identity.
var hostUserAssignedSettings = useUserAssigned ? { AzureWebJobsStorage__clientId: userAssignedIdentityClientId } : {}

resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov:skip=CKV_AZURE_13:checkov applies site checks to every sites/config resource; this one is the appsettings dictionary, which has no such property (HTTP callers authenticate with a function key).
  // checkov:skip=CKV_AZURE_63:checkov applies site checks to every sites/config resource; this one is the appsettings dictionary, which has no such property.
  // checkov:skip=CKV_AZURE_65:checkov applies site checks to every sites/config resource; this one is the appsettings dictionary, which has no such property.
  // checkov:skip=CKV_AZURE_66:checkov applies site checks to every sites/config resource; this one is the appsettings dictionary, which has no such property.
  // checkov:skip=CKV_AZURE_80:checkov applies site checks to every sites/config resource; this one is the appsettings dictionary, which has no such property (the app is Python, not .NET).
  // checkov:skip=CKV_AZURE_88:checkov applies site checks to every sites/config resource; this one is the appsettings dictionary, which has no such property (Flex Consumption has no Azure Files content share).
  // checkov:skip=CKV_AZURE_222:checkov applies site checks to every sites/config resource; this one is the appsettings dictionary, which has no such property (public access is discussed on the site resource).
  parent: functionApp
  name: 'appsettings'
  properties: union(productSettings, hostSettings, hostUserAssignedSettings)
}

// Deployments authenticate with Microsoft Entra ID (azd, az): no basic-auth publishing.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
output principalId string = useUserAssigned ? '' : functionApp.identity.principalId

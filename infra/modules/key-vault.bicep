// The vault that holds the Azure DevOps PAT, for users who cannot add the identity to their
// organization. RBAC authorization: access is granted by role assignment on this vault only.
// The template never sees the PAT: the user stores it after deployment (docs/deploy.md).

param name string
param location string
param tags object = {}

@description('Name of the secret the app reads as AZURE_DEVOPS_PAT.')
param patSecretName string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_110:Purge protection keeps a deleted vault unpurgeable, so azd down --purge then azd up fails for the retention period; the vault holds one PAT the user can re-issue.
  // checkov:skip=CKV_AZURE_42:Soft delete is on (7 days); purge protection is off so that azd down --purge can purge the vault and the environment can be re-created.
  // checkov:skip=CKV_AZURE_109:Flex Consumption without VNet integration resolves Key Vault references over the public endpoint; a firewall would block it. Access is by RBAC only.
  // checkov:skip=CKV_AZURE_189:The app resolves the Key Vault reference over the vault's public endpoint (no VNet integration); access is by RBAC only.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

output name string = vault.name
// Versionless, so a new secret version (a rotated PAT) is picked up without a redeploy.
output patSecretUri string = '${vault.properties.vaultUri}secrets/${patSecretName}'

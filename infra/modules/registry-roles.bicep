// The identity's rights on the existing registry, and nothing wider: role assignments scoped to
// the registry itself. Deployed into the registry's resource group (main.bicep sets the scope).

param registryName string

@description('Principal id of the Function App\'s identity.')
param principalId string

@description('rbac: AcrPull + AcrDelete. abac: registries with roleAssignmentMode AbacRepositoryPermissions honour neither, and need Repository Contributor + Catalog Lister.')
@allowed([
  'rbac'
  'abac'
])
param permissionMode string

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: registryName
}

var acrPullRoleId = '7f951dda-4ed3-4680-a7ca-43fe172d538d' // AcrPull
var acrDeleteRoleId = 'c2f4ef07-c644-48eb-af81-4b1b4947fb11' // AcrDelete
var repositoryContributorRoleId = '2efddaa5-3f1f-4df3-97df-af3f13818f4c' // Container Registry Repository Contributor
var catalogListerRoleId = 'bfdb9389-c9a5-478a-bb2f-ba9ca092c3c7' // Container Registry Repository Catalog Lister

// AcrPull: list repositories and tags, read manifests.
resource acrPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (permissionMode == 'rbac') {
  name: guid(registry.id, principalId, acrPullRoleId)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPullRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// AcrDelete: delete tags and manifests.
resource acrDelete 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (permissionMode == 'rbac') {
  name: guid(registry.id, principalId, acrDeleteRoleId)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrDeleteRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Container Registry Repository Contributor: read, list tags and delete in every repository.
resource repositoryContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (permissionMode == 'abac') {
  name: guid(registry.id, principalId, repositoryContributorRoleId)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', repositoryContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Container Registry Repository Catalog Lister: list the registry's repositories.
resource catalogLister 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (permissionMode == 'abac') {
  name: guid(registry.id, principalId, catalogListerRoleId)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', catalogListerRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// The user-assigned identity the Function App runs as. A user-assigned identity exists before
// the app does, so its roles can be granted before the first invocation and it survives a
// re-creation of the app (the Azure DevOps organization keeps knowing it).

@description('Name of the user-assigned managed identity.')
param name string

param location string
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId

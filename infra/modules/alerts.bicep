// Alerts on the product's run summary: one trace per run whose customDimensions carry
// cleanup.outcome (succeeded | partial | failed), cleanup.registry and cleanup.deleted.
// docs/deploy.md lists these names as what the code must emit.

param namePrefix string
param location string
param tags object = {}

@description('Resource id of the Application Insights component the runs report to.')
param applicationInsightsId string

@description('Address the alerts are mailed to.')
param alertEmail string

@description('Alert when one run deletes more tags than this.')
param deletionAlertThreshold int

@description('Alert when no run has succeeded for this many hours (the nightly run plus slack).')
param missedRunAlertHours int

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: '${namePrefix}-ag'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'acrcleanup'
    enabled: true
    emailReceivers: [
      {
        name: 'email'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource runFailed 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-run-failed'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'ACR cleanup: a run failed'
    description: 'A cleanup run ended with outcome failed: it stopped before deleting (bad credential, unreachable service, missing project, plan over the cap).'
    severity: 1
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: '''
traces
| where tostring(customDimensions["cleanup.outcome"]) == "failed"
| project timestamp, registry = tostring(customDimensions["cleanup.registry"]), message
'''
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

resource noSuccessfulRun 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-no-successful-run'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'ACR cleanup: no successful run in ${missedRunAlertHours} hours'
    description: 'No cleanup run ended with outcome succeeded in the last ${missedRunAlertHours} hours: the nightly run did not happen or did not succeed.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'PT1H'
    // The query looks back further than one window; the time range must cover it.
    overrideQueryTimeRange: 'P2D'
    criteria: {
      allOf: [
        {
          query: format('''
traces
| where timestamp > ago({0}h)
| where tostring(customDimensions["cleanup.outcome"]) == "succeeded"
''', missedRunAlertHours)
          timeAggregation: 'Count'
          operator: 'LessThan'
          threshold: 1
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

resource manyDeletions 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-many-deletions'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'ACR cleanup: more than ${deletionAlertThreshold} tags deleted in one run'
    description: 'One cleanup run deleted (or, in a dry run, planned to delete) more tags than expected.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: '''
traces
| where isnotempty(customDimensions["cleanup.outcome"])
| extend deleted = toint(customDimensions["cleanup.deleted"])
| project timestamp, deleted, registry = tostring(customDimensions["cleanup.registry"])
'''
          metricMeasureColumn: 'deleted'
          timeAggregation: 'Maximum'
          operator: 'GreaterThan'
          threshold: deletionAlertThreshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

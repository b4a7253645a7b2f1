{{/*
Shared parts of the webhook entries (webhook-validatingwebhookconfiguration.yaml).
*/}}

{{/* Namespaces never gated (SPEC §5): the system ones and the controller's own. */}}
{{- define "changegate.excludedNamespaces" -}}
{{- list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace | uniq | toJson -}}
{{- end -}}

{{/* The tier-1 namespaces: the policy's selector, minus the excluded ones. */}}
{{- define "changegate.tierNamespaceSelector" -}}
matchLabels:
  {{- toYaml .Values.policy.tierSelector | nindent 2 }}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: {{ include "changegate.excludedNamespaces" . }}
{{- end -}}

{{/*
Where the API server sends AdmissionReviews: the one endpoint POST /validate (the webhook
dispatches by resource), on the in-cluster Service or at webhook.externalURL.
*/}}
{{- define "changegate.clientConfig" -}}
{{- if .Values.webhook.externalURL }}
url: {{ printf "%s/validate" (trimSuffix "/" .Values.webhook.externalURL) | quote }}
{{- else }}
service:
  name: changegate-webhook
  namespace: {{ .Release.Namespace }}
  path: /validate
  port: 443
{{- end }}
{{- with include "changegate.caBundle" . }}
caBundle: {{ . }}
{{- end }}
{{- end -}}

{{/*
Settings every entry shares. failurePolicy Fail everywhere (SPEC §5): an outage denies,
it never admits. sideEffects None: the webhook only answers, counts and logs, so dry-runs
reach it. Equivalent: a request through another version of a gated resource is still
sent (converted).
*/}}
{{- define "changegate.entryCommon" -}}
clientConfig:
  {{- include "changegate.clientConfig" . | nindent 2 }}
failurePolicy: Fail
sideEffects: None
admissionReviewVersions: [v1]
matchPolicy: Equivalent
timeoutSeconds: {{ .Values.webhook.timeoutSeconds }}
{{- end -}}

{{/* CEL: the old object's labels match the tier selector (all of its pairs). Each key is
tested with `in` before it is read: a missing key is an error in CEL, and an error
with failurePolicy Fail would reject the write. */}}
{{- define "changegate.celOldInTier" -}}
{{- $terms := list "has(oldObject.metadata.labels)" -}}
{{- range $k, $v := .Values.policy.tierSelector -}}
{{- $key := toJson $k -}}
{{- $terms = append $terms (printf "%s in oldObject.metadata.labels" $key) -}}
{{- $terms = append $terms (printf "oldObject.metadata.labels[%s] == %s" $key (toJson $v)) -}}
{{- end -}}
{{- join " && " $terms -}}
{{- end -}}

{{/* CEL: a list of strings as a CEL list literal (JSON string syntax is CEL's). */}}
{{- define "changegate.celList" -}}
{{- toJson (. | default list) -}}
{{- end -}}

{{/*
Names are fixed, not prefixed with the release name: docs/contracts.md names the
ConfigMaps (changegate-trust, -policy, -info, -config, -ledger-*) and the operator's
service account (changegate-operator), and the CLI finds them by these names. The chart
is installed once per cluster (its CRD, ClusterRoles and webhook configuration are
cluster-scoped anyway).
*/}}

{{/* Labels on every object. */}}
{{- define "changegate.labels" -}}
app.kubernetes.io/name: changegate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: changegate
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component: (list $ "webhook"). */}}
{{- define "changegate.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: changegate
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Labels of one component's objects: (list $ "webhook"). */}}
{{- define "changegate.componentLabels" -}}
{{ include "changegate.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The image reference: a digest pins it, else the tag (default: appVersion). */}}
{{- define "changegate.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The operator's username, as the webhook sees it in userInfo. */}}
{{- define "changegate.operatorUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:changegate-operator
{{- end -}}

{{/* Whether the webhook runs in the cluster (no externalURL). "true" or "". */}}
{{- define "changegate.inCluster" -}}
{{- if not .Values.webhook.externalURL }}true{{ end -}}
{{- end -}}

{{/*
Whether the Prometheus Operator objects are rendered: "true" or "false".
auto follows the cluster's API (monitoring.coreos.com/v1 served or not).
*/}}
{{- define "changegate.monitoring" -}}
{{- if eq (toString .Values.monitoring.enabled) "auto" -}}
{{- .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}
{{- else -}}
{{- .Values.monitoring.enabled -}}
{{- end -}}
{{- end -}}

{{/*
The restricted pod and container security settings (Pod Security "restricted"):
non-root uid 65532 (the image's user), read-only root filesystem, no capabilities,
no privilege escalation, the runtime's default seccomp profile.
*/}}
{{- define "changegate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "changegate.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

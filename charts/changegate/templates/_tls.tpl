{{/*
The chart-made CA and serving certificate, as JSON {ca, crt, key} (base64 PEM).
Kept across upgrades: when the Secret changegate-webhook-tls already exists (lookup), its
certificate is reused, so an upgrade never rotates the CA under running replicas.
`helm template` and offline renders cannot look up: they get new ones on every render.
Generated once per render and cached in .Values, so the Secret and the webhook
configuration's caBundle (two templates) always carry the same CA.
*/}}
{{- define "changegate.tls.generated" -}}
{{- if not (hasKey .Values "_changegateGeneratedTLS") -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace "changegate-webhook-tls" -}}
{{- $data := dict -}}
{{- if and $secret $secret.data -}}{{- $data = $secret.data -}}{{- end -}}
{{- $tls := dict -}}
{{- if and (hasKey $data "ca.crt") (hasKey $data "tls.crt") (hasKey $data "tls.key") -}}
{{- $tls = dict "ca" (index $data "ca.crt") "crt" (index $data "tls.crt") "key" (index $data "tls.key") -}}
{{- else -}}
{{- $days := int .Values.tls.generated.validityDays -}}
{{- $svc := printf "changegate-webhook.%s.svc" .Release.Namespace -}}
{{- $ca := genCA "changegate-webhook-ca" $days -}}
{{- $names := list "changegate-webhook" (printf "changegate-webhook.%s" .Release.Namespace) $svc (printf "%s.cluster.local" $svc) -}}
{{- $cert := genSignedCert $svc nil $names $days $ca -}}
{{- $tls = dict "ca" ($ca.Cert | b64enc) "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) -}}
{{- end -}}
{{- $_ := set .Values "_changegateGeneratedTLS" $tls -}}
{{- end -}}
{{- index .Values "_changegateGeneratedTLS" | toJson -}}
{{- end -}}

{{/*
The caBundle of every webhook entry: none with cert-manager (its CA injector writes it),
webhook.caBundle with externalURL or a Secret you manage, else the chart-made CA.
*/}}
{{- define "changegate.caBundle" -}}
{{- if or .Values.webhook.externalURL .Values.tls.existingSecret -}}
{{- .Values.webhook.caBundle -}}
{{- else if not .Values.tls.certManager.enabled -}}
{{- (include "changegate.tls.generated" . | fromJson).ca -}}
{{- end -}}
{{- end -}}

{{/* The Secret the webhook pods mount. */}}
{{- define "changegate.tlsSecretName" -}}
{{- .Values.tls.existingSecret | default "changegate-webhook-tls" -}}
{{- end -}}

{{/*
Helpers of monitoring-prometheusrule.yaml.
*/}}

{{/*
Deny reasons that mean someone presented a forged, untrusted, reused or tampered approval
(category `trust` of changegate.core.reasons.ReasonCode and docs/contracts.md; a test
holds this list to them): these page. Waiting or wrong-change reasons
are tickets at most.
*/}}
{{- define "changegate.trustReasons" -}}
signature_invalid|key_untrusted|approver_wrong_namespace|approver_duplicate|self_approval|applier_approval|approval_used|spec_statement_mismatch|statement_invalid|manifest_mismatch|requester_mismatch|approval_immutable
{{- end -}}

{{/* Deny reasons of the webhook itself (category `fault`; a test holds it to ReasonCode). */}}
{{- define "changegate.selfReasons" -}}
config_invalid|cache_not_ready|internal_error|deadline_exceeded|namespace_unknown
{{- end -}}

{{/*
A counter went up within the window: (list SELECTOR WINDOW BY-LABELS).
increase() needs two samples of a series, and a labelled counter series is born at its
first increment (value 1): so the first forged signature ever would be missed. The
second branch counts a series that did not exist one window ago (the metric name alone
is enough on the right of `unless`); `> 0` on the first
branch lets it apply to a young series whose increase is still 0. Caveat: after
Prometheus loses its data, a series that was already non-zero fires once.
*/}}
{{- define "changegate.promIncreased" -}}
{{- $sel := index . 0 -}}
{{- $w := index . 1 -}}
{{- $name := regexReplaceAll "[{].*" $sel "" -}}
sum by ({{ index . 2 }}) (
  (increase({{ $sel }}[{{ $w }}]) > 0)
  or
  ({{ $sel }} unless {{ $name }} offset {{ $w }})
) > 0
{{- end -}}

{{/* runbook_url of an alert: (list $ "AlertName"). */}}
{{- define "changegate.runbook" -}}
{{- printf "%s#%s" (index . 0).Values.monitoring.prometheusRule.runbookBaseURL (lower (index . 1)) -}}
{{- end -}}

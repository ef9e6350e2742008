{{/* The release's base name: the release name, with "-corral" unless it already says corral. */}}
{{- define "corral.fullname" -}}
{{- if contains "corral" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-corral" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "corral.headless" -}}{{ include "corral.fullname" . }}-headless{{- end -}}

{{- define "corral.component" -}}{{ .Values.mode }}{{- end -}}

{{/* Labels that select the pods (never change them on an installed release). */}}
{{- define "corral.selectorLabels" -}}
app.kubernetes.io/name: corral
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "corral.labels" -}}
{{ include "corral.selectorLabels" . }}
app.kubernetes.io/component: {{ include "corral.component" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "corral.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}:{{ $tag }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end -}}

{{- define "corral.secretName" -}}
{{- required "secrets.existingSecret: name the Secret holding the admin token and the cluster secret (deploy/README.md, \"Secrets\")" .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The upstream Corral fronts: the app in the same pod (sidecar) or upstream.url. */}}
{{- define "corral.upstream" -}}
{{- if eq .Values.mode "sidecar" -}}
http://127.0.0.1:{{ .Values.sidecar.app.port }}
{{- else -}}
{{ required "upstream.url: the service Corral fronts" .Values.upstream.url }}
{{- end -}}
{{- end -}}

{{- define "corral.check" -}}
{{- if not (has .Values.mode (list "gateway" "sidecar")) -}}
{{- fail (printf "mode = %q: expected gateway or sidecar" .Values.mode) -}}
{{- end -}}
{{- if not (has .Values.discovery (list "kubernetes" "dns")) -}}
{{- fail (printf "discovery = %q: expected kubernetes or dns" .Values.discovery) -}}
{{- end -}}
{{- if and (eq .Values.mode "sidecar") (not .Values.sidecar.app.image) -}}
{{- fail "mode = sidecar needs sidecar.app.image: the app that shares the pod" -}}
{{- end -}}
{{- end -}}

{{/* The locked-down securityContext every container gets. */}}
{{- define "corral.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Chart name. */}}
{{- define "loraplex.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "loraplex.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Selector labels: the Deployment, the Service and the InferencePool select on these. */}}
{{- define "loraplex.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loraplex.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "loraplex.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "loraplex.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The selected profile (cpu or gpu). */}}
{{- define "loraplex.profile" -}}
{{- $p := index .Values.profiles .Values.profile }}
{{- if not $p }}
{{- fail (printf "profile %q is not in profiles (want cpu or gpu)" .Values.profile) }}
{{- end }}
{{- toYaml $p }}
{{- end }}

{{- define "loraplex.poolName" -}}
{{- default (include "loraplex.fullname" .) .Values.inferencePool.name }}
{{- end }}

{{- define "loraplex.adaptersClaim" -}}
{{- default (printf "%s-adapters" (include "loraplex.fullname" .)) .Values.adapters.persistence.existingClaim }}
{{- end }}

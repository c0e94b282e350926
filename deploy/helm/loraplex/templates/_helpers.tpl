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

{{/* The base model's name in the API: --served-model-name, else the model folder's name, else the
built-in demo's (demo.Name). The deployment passes it as --served-model-name whenever a model
path is set, since the server's own default is the --model path as given (vLLM's rule). */}}
{{- define "loraplex.servedModelName" -}}
{{- if .Values.model.servedModelName }}
{{- .Values.model.servedModelName }}
{{- else if .Values.model.path }}
{{- base .Values.model.path }}
{{- else }}
{{- "loraplex-demo" }}
{{- end }}
{{- end }}

{{/* The model names other than the base model that the pods serve, as a YAML list: the built-in
demo's adapters and router (demo.Domains, demo.RouterName) when no model is set, then
bodyBasedRouting.adapters. Each must be a valid adapter name (a single path element not starting
with a dot, as --adapter-dir requires), appear once, and differ from the base model's name. */}}
{{- define "loraplex.servedAdapters" -}}
{{- $names := list }}
{{- if not .Values.model.path }}
{{- $names = list "c" "english" "go" "python" "auto" }}
{{- end }}
{{- $names = concat $names .Values.bodyBasedRouting.adapters }}
{{- $base := include "loraplex.servedModelName" . }}
{{- range $names }}
{{- if not (kindIs "string" .) }}
{{- fail (printf "bodyBasedRouting.adapters: %v is not a string" .) }}
{{- end }}
{{- if or (eq . "") (hasPrefix "." .) (contains "/" .) (contains "\\" .) (gt (len .) 255) (eq . $base) }}
{{- fail (printf "bodyBasedRouting.adapters: %q is not an adapter name (a single path element, not starting with a dot, other than the base model %q)" . $base) }}
{{- end }}
{{- end }}
{{- if ne (len $names) (len (uniq $names)) }}
{{- fail (printf "bodyBasedRouting.adapters: a name appears twice in %v" $names) }}
{{- end }}
{{- toYaml $names }}
{{- end }}
